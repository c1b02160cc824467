"""What a training stage's data gives the loop for each step."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple, Protocol

import torch


class Batch(NamedTuple):
    tokens: torch.Tensor  # (B, S + 1) ids: inputs and shifted targets
    languages: Counter  # tokens per language in the batch
    weights: torch.Tensor | None = None  # (B, S) loss weight per target; None weighs every target alike
    extra: dict | None = None  # what a stage's own objective needs besides tokens (e.g. teacher targets)


class BatchSource(Protocol):
    def batch(self, step: int) -> Batch:
        """The whole step's batch over all ranks: a pure function of ``step``."""
        ...
