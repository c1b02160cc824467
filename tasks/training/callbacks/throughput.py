"""Throughput and MFU between two logging steps: tokens per second over all ranks, and each device's model FLOP/s
against its peak (:mod:`tasks.training.flops`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tasks.training.callbacks.callback import Callback, Step, Trainer


@dataclass(frozen=True)
class Throughput:
    """What MFU is measured against: model FLOPs per token and the hardware's peak FLOP/s."""

    flops_per_token: float = 0.0
    peak_flops: float = 0.0


class ThroughputMonitor(Callback):
    def __init__(self, throughput: Throughput) -> None:
        self.throughput = throughput
        self.clock, self.tokens = 0.0, 0

    def pre_train(self, trainer: Trainer) -> None:
        self.clock, self.tokens = time.monotonic(), 0

    def post_step(self, trainer: Trainer, step: Step) -> None:
        self.tokens += step.batch.tokens[:, 1:].numel()
        if step.metrics is None:
            return
        tokens_per_second = self.tokens / max(time.monotonic() - self.clock, 1e-9)
        step.metrics["tokens_per_second"] = tokens_per_second
        trainer.history.tokens_per_second.append(tokens_per_second)
        if self.throughput.flops_per_token and self.throughput.peak_flops:
            # Per device: each rank's share of the tokens against one device's peak.
            per_device = tokens_per_second / trainer.engine.world_size
            step.metrics["mfu"] = per_device * self.throughput.flops_per_token / self.throughput.peak_flops
            trainer.history.mfu.append(step.metrics["mfu"])
        self.clock, self.tokens = time.monotonic(), 0
