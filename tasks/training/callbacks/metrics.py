"""Metrics logging: every ``log_every`` steps and at the last, the step's metrics go to ``on_metrics`` (a stage
passes its MLflow tracker's ``log_metrics``)."""

from __future__ import annotations

from typing import Callable

from tasks.training.callbacks.callback import Callback, Step, Trainer


class MetricsLog(Callback):
    def __init__(self, on_metrics: Callable[[int, dict], None]) -> None:
        self.on_metrics = on_metrics

    def post_step(self, trainer: Trainer, step: Step) -> None:
        if step.metrics is not None:
            self.on_metrics(step.done, step.metrics)
