"""Config of co-distillation: how a student mixes the hard label with the teacher's distribution.

Meta co-distilled Maverick from Behemoth with a loss that "dynamically weights soft and
hard targets through training" and amortised the teacher's forward passes over the
students' data (LLAMA4_SPEC §2.3); the loss itself is unpublished. herd's stand-in
(LLAMA4_SPEC §3, design note) is, per target token,

    loss = (1 - w) * CE(student, label) + w * T^2 * KL(teacher_T || student_T)

with the soft weight ``w`` in [0, 1] chosen by ``scheme``. The same section says where the
teacher's distribution comes from: a forward pass of the teacher during training, or a
cache of its top-k log-probabilities written once and read by every student.
"""

from __future__ import annotations

from datetime import timedelta

from typing import Literal

from pydantic import Field, model_validator

from herd.config import StageConfig, operational
from herd.stage import Input, Resources, StageSpec
from herd.stages.models import TEACHER
from herd.stages.shared import TOKENS


class CodistillConfig(StageConfig):
    scheme: Literal["none", "fixed", "scheduled", "dynamic"] = Field(
        "dynamic",
        description="none: plain next-token loss (the baseline); fixed: w = alpha; scheduled: w moves from "
                    "alpha_start to alpha_end over training; dynamic: the schedule sets the base odds and each "
                    "token's teacher confidence, label agreement and student-teacher gap move them.",
    )
    temperature: float = Field(
        1.0, gt=0,
        description="Softmax temperature T of both distributions in the KL; the KL is scaled by T^2 so its "
                    "gradients keep their size as T changes (Hinton et al.).",
    )
    alpha: float = Field(0.5, ge=0, le=1, description="fixed: the soft weight w of every token.")
    alpha_start: float = Field(0.8, ge=0, le=1, description="scheduled, dynamic: the soft weight at step 0.")
    alpha_end: float = Field(
        0.3, ge=0, le=1,
        description="scheduled, dynamic: the soft weight at the last step. Teacher-heavy early, label-heavy late: "
                    "the teacher's smooth targets speed up early learning, the labels are the data itself.",
    )
    schedule: Literal["linear", "cosine"] = Field(
        "cosine", description="How the soft weight moves from alpha_start to alpha_end over the steps."
    )
    label_gain: float = Field(
        4.0, ge=0,
        description="dynamic: log-odds added per unit of c * (2h - 1), where c is the teacher's top probability "
                    "and h = 1 - p_teacher(label). A confident teacher that agrees with the label sends the token to "
                    "the label; a confident teacher that finds the label unlikely sends it to the teacher.",
    )
    student_gain: float = Field(
        2.0, ge=0,
        description="dynamic: log-odds added per unit of c * JS(student || teacher) / log 2: where the student is "
                    "far from a confident teacher, there is more to learn from the teacher.",
    )
    top_k: int = Field(
        32, ge=1,
        description="Width of the teacher cache: the k most likely next tokens per position, as ids and "
                    "log-probabilities (teacher_source=cache). The KL runs over these k ids.",
    )
    teacher_source: Literal["cache", "online"] = Field(
        "cache",
        description="cache: read the teacher's top-k from a cache built once over the students' windows (the "
                    "amortisation); online: run the teacher forward every step and use its full distribution.",
    )
    cache_windows: Literal["run", "all"] = Field(
        "run",
        description="Which windows the cache covers: run, those the students' pretrain run reads (its seq_len, "
                    "batch size, steps and seed; cheaper below one epoch); all, every window of the token shards "
                    "(any student run at that seq_len can read it).",
    )
    cache_batch_size: int = operational(8, "Windows per teacher forward pass while the cache is built.")

    @model_validator(mode="after")
    def _schedule_moves(self) -> "CodistillConfig":
        if self.scheme == "scheduled" and self.alpha_start == self.alpha_end:
            raise ValueError("scheme 'scheduled' needs alpha_start != alpha_end; use 'fixed' for a constant weight")
        return self


SPEC = StageSpec(
    name="codistill",
    summary="cache the teacher's top-k log-probabilities over the students' pretraining windows, once for all",
    config_type=CodistillConfig,
    config_section="codistill",
    inputs={"teacher": Input("the teacher's pretrain output", from_stage=f"{TEACHER}.pretrain"), "tokens": TOKENS},
    # The cache covers the windows the students' pretraining reads.
    reads=("pretrain.seq_len", "pretrain.batch_size", "pretrain.steps", "pretrain.seed"),
    # One process runs the teacher over the windows: one GPU.
    resources=Resources(cpu="8", memory="120Gi", gpus=1, shm="16Gi"),
    timeout=timedelta(hours=12),
)
