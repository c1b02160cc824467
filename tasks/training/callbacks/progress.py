"""A progress bar on a terminal (rank 0); nothing in a log file, where the metrics are logged anyway."""

from __future__ import annotations

import sys

from tasks.training.callbacks.callback import Callback, Step, Trainer


class Progress(Callback):
    def __init__(self) -> None:
        self.bar = None

    def pre_train(self, trainer: Trainer) -> None:
        if trainer.engine.rank == 0 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=trainer.config.steps, initial=trainer.start, desc=trainer.label, unit="step")

    def post_step(self, trainer: Trainer, step: Step) -> None:
        if self.bar is not None:
            self.bar.update(step.done - self.bar.n)
            self.bar.set_postfix(loss=f"{step.loss:.3f}")

    def post_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
