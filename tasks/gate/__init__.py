"""The promotion gate: a variant's figures against thresholds and the champion's, and its registration.

:mod:`stage` is the stage; the judgement, shared with promotion (:mod:`tasks.registry.promote`), is
:mod:`tasks.registry.verdict`.
"""
