"""Checkpoint cadence: the engine saves every ``checkpoint_every`` steps and at the last, where a retry resumes; the
history so far goes with it, so that a resumed run reports on every step."""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.training.callbacks.callback import Callback, Step, Trainer

log = logging.getLogger(__name__)


class Checkpointer(Callback):
    def __init__(self, out: Path, remote: str | None) -> None:
        self.out, self.remote = out, remote

    def post_step(self, trainer: Trainer, step: Step) -> None:
        if step.done % trainer.config.checkpoint_every == 0 or step.done == trainer.config.steps:
            saved = trainer.engine.save(self.out, step.done, self.remote, {"history": trainer.history.to_json()})
            log.info("%s: step %d, loss %.4f, checkpoint %s", trainer.label, step.done, step.loss, saved.name)
