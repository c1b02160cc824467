"""Config of the ``sft`` stage: lightweight SFT on the problems a judge finds hard.

A judge scores every training example's difficulty, the easiest share is dropped, and the
model trains on the rest with the loss on assistant tokens only. Llama 4 dropped more than
half of the "easy" SFT data for Scout and Maverick and 95% for Behemoth, so the share is
set per role: ``drop_easy_fraction`` for the students, ``teacher_drop_easy_fraction`` for
the teacher; :meth:`SFTConfig.drop_fraction` picks by variant.
"""

from __future__ import annotations

from datetime import timedelta

from typing import Literal

from pydantic import Field, model_validator

from herd.config import operational
from herd.stage import Input, StageSpec
from herd.stages.models import TEACHER, VARIANTS
from herd.stages.shared import ONE_GPU, POST_TRAINING_INPUTS
from herd.stages.training import TrainingConfig

Judge = Literal["teacher_loss", "student_loss", "teacher_passk"]


class SFTConfig(TrainingConfig):
    seq_len: int = Field(256, ge=8, description="Rows of packed chat examples; longer examples are skipped.")
    batch_size: int = Field(8, ge=1, description="Packed rows per step over all ranks.")
    steps: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(5, ge=0)
    checkpoint_every: int = operational(20, "Steps between checkpoints; resuming reproduces the same weights.")
    judge: Judge = Field(
        "teacher_loss",
        description="teacher_loss / student_loss: that model's mean loss on the reference answer's tokens; "
                    "teacher_passk: 1 - the teacher's pass@k over sampled answers, by the item's checker.",
    )
    drop_easy_fraction: float = Field(0.5, ge=0, lt=1, description="Share of the easiest examples dropped for a student.")
    teacher_drop_easy_fraction: float = Field(
        0.95, ge=0, lt=1, description="Share of the easiest examples dropped when the teacher (Behemoth) itself is tuned."
    )
    min_kept: int = Field(
        200, ge=1, description="Pruning keeps at least this many examples (the hardest), whatever the drop share: "
                               "95% of a small problem set is too little to fine-tune on.")
    max_epochs: float = Field(
        4.0, gt=0, description="Training stops after this many passes over the kept rows, even before `steps`: "
                               "a tiny kept set trained for many epochs is memorised, not learned.")
    passk_samples: int = Field(4, ge=1, description="Answers sampled per item by teacher_passk (n).")
    passk_k: int = Field(1, ge=1, description="The k of pass@k (unbiased estimator over n samples).")
    pass_reward: float = Field(0.5, gt=0, le=1, description="A sampled answer passes at this checker reward or more.")
    sample_temperature: float = Field(1.0, gt=0, description="Sampling temperature of teacher_passk.")
    max_new_tokens: int = Field(48, ge=1, description="Longest sampled answer (judge sampling and greedy pass@1).")
    buckets: int = Field(4, ge=1, description="Quantile buckets of the judge score in the report (0 = easiest).")
    hard_buckets: int = Field(2, ge=1, description="The hardest buckets of held-out items form the hard eval set.")
    eval_max_items: int = Field(64, ge=1, description="Held-out items judged (the eval set's first N).")
    compare_unpruned: bool = Field(
        True, description="Also train the same init on the unpruned data at equal compute and evaluate both."
    )
    judge_batch_size: int = operational(16, "Examples per judge forward pass.")
    examples_to_log: int = operational(3, "Kept and dropped examples per bucket logged to MLflow.")

    @model_validator(mode="after")
    def _consistent(self) -> SFTConfig:
        if self.passk_k > self.passk_samples:
            raise ValueError(f"passk_k ({self.passk_k}) exceeds passk_samples ({self.passk_samples})")
        if self.hard_buckets > self.buckets:
            raise ValueError(f"hard_buckets ({self.hard_buckets}) exceeds buckets ({self.buckets})")
        return self

    def drop_fraction(self, variant: str) -> float:
        """The share of easy examples dropped for ``variant``: the teacher's when it is the teacher."""
        return self.teacher_drop_easy_fraction if variant == TEACHER else self.drop_easy_fraction


# Behemoth fine-tunes its pretrained model; the students their mid-trained one. The
# teacher judges every example's difficulty for all three.
SPECS = tuple(StageSpec(
    name="sft",
    summary="judge-pruned SFT: drop the easiest share by the teacher's judgement, train on assistant tokens",
    config_type=SFTConfig,
    config_section="sft",
    variant=variant,
    inputs={"model": Input("the model to fine-tune",
                           from_stage=f"{variant}.{'pretrain' if variant == TEACHER else 'midtrain'}"),
            "judge": Input("the teacher that judges difficulty", from_stage=f"{TEACHER}.pretrain"),
            **POST_TRAINING_INPUTS},
    resources=ONE_GPU,
    timeout=timedelta(hours=12),
    resumable=True,
) for variant in VARIANTS)
