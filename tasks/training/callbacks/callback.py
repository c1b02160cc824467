"""The hooks the training loop calls, as OLMo-core's callbacks: one concern per class, each in a short file.

    class Concern(Callback):
        def post_step(self, trainer: Trainer, step: Step) -> None:
            if step.metrics is not None:
                step.metrics["concern/value"] = ...

The loop calls ``pre_train`` once the engine has resumed, ``post_step`` after every
optimizer step, and ``post_train`` after the last step, each callback in the order given.
A callback adds to ``step.metrics`` on a logging step; :class:`~.metrics.MetricsLog`
sends them on, so the callbacks that measure come before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from herd.stages.training import TrainingConfig
from tasks.training.batch import Batch
from tasks.training.engine import Engine
from tasks.training.history import History


@dataclass
class Trainer:
    """What a callback may read of the run."""

    engine: Engine
    config: TrainingConfig
    history: History
    label: str  # names the run in logs: "scout.pretrain"
    start: int  # the step the run starts at: 0, or where it resumed


@dataclass
class Step:
    """One optimizer step as the callbacks see it."""

    done: int  # steps done, this one included: a checkpoint's number
    batch: Batch
    loss: float  # the objective's loss, before router balance
    grad_norm: float
    expert_counts: list[torch.Tensor]  # routed tokens per expert of each MoE layer, summed over the ranks
    over_capacity: torch.Tensor | None  # rows past their expert's capacity, all layers and ranks; None without one
    metrics: dict[str, float] | None  # what this step logs; None when it logs nothing


class Callback:
    def pre_train(self, trainer: Trainer) -> None:
        pass

    def post_step(self, trainer: Trainer, step: Step) -> None:
        pass

    def post_train(self, trainer: Trainer) -> None:
        pass
