"""Config of the ``midtrain`` stage: a student continues at a longer context with needle-in-a-haystack data."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator

from herd.config import operational
from herd.stage import Input, StageSpec
from herd.stages.models import STUDENTS
from herd.stages.shared import ONE_GPU, TOKENS
from herd.stages.training import TrainingConfig


class MidtrainConfig(TrainingConfig):
    seq_len: int = Field(1024, ge=8, description="The long context: at least 4x pretraining's for nano.")
    batch_size: int = Field(2, ge=1, description="Sequences per step over all ranks.")
    steps: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    checkpoint_every: int = operational(40, "Steps between checkpoints; resuming reproduces the same weights.")
    needle_fraction: float = Field(
        0.75, ge=0, le=1, description="Share of training sequences with a needle (a pass key) and its question."
    )
    needle_loss_weight: float = Field(
        5.0, ge=1, description="Loss weight of the answer tokens, so a small model learns retrieval in few steps."
    )
    eval_lengths: list[int] = Field([256, 512, 1024, 2048], min_length=1,
                                    description="Context lengths of the retrieval grid; include some beyond seq_len.")
    eval_depths: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=1,
                                     description="Where the needle sits, as a share of the haystack.")
    eval_trials: int = Field(8, ge=1, description="Needles per grid cell.")

    @field_validator("eval_depths")
    @classmethod
    def _depths(cls, values: list[float]) -> list[float]:
        if any(not 0 <= v <= 1 for v in values):
            raise ValueError("depths are shares of the haystack, between 0 and 1")
        return values


SPECS = tuple(StageSpec(
    name="midtrain",
    summary="continue a student at a longer context on long documents with needles; needle-retrieval heatmaps",
    config_type=MidtrainConfig,
    config_section="midtrain",
    variant=student,
    inputs={"model": Input("the variant's pretrain output", from_stage=f"{student}.pretrain"), "tokens": TOKENS},
    resources=ONE_GPU,
    timeout=timedelta(hours=24),
    resumable=True,
) for student in STUDENTS)
