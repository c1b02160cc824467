"""Lightweight SFT: a judge scores each example's difficulty, the easy share is dropped, the rest trains.

:mod:`judge` (difficulty and pruning), :mod:`data` (packed rows, assistant-token weights),
:mod:`report` (kept and dropped per bucket and capability), :mod:`evaluate` (the held-out
hard set, pruned against unpruned at equal compute), :mod:`run` (:func:`run.run_sft`).
"""
