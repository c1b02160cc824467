"""Lightweight DPO after RL: on-policy pairs scored by the problems' checkers, trained against a frozen reference.

:func:`pairs.build_pairs` samples and pairs, :func:`train.run_dpo` is the stage's entry point.
"""
