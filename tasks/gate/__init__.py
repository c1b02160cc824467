"""The promotion gate: a variant's figures against thresholds and the champion's, and its registration.

:func:`figures.judge` is the judgement, :mod:`stage` the stage; promotion is :mod:`tasks.registry.promote`.
"""
