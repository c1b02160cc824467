"""Aux-loss-free router balancing: each MoE layer's selection bias nudged towards balance after every step."""

from __future__ import annotations

from tasks.training.callbacks.callback import Callback, Step, Trainer
from tasks.training.router import update_selection_bias


class RouterBias(Callback):
    def post_step(self, trainer: Trainer, step: Step) -> None:
        update_selection_bias(trainer.engine.module, step.expert_counts, trainer.config.bias_update_rate)
