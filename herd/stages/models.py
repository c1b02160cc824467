"""The three Llama 4 variants a pipeline trains, each a model preset (``herd model info PRESET``).

Behemoth is the teacher; Scout and Maverick are the students that mid-train and post-train.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from herd.config import StageConfig
from herd.model import MODEL_PRESETS

TEACHER = "behemoth"
STUDENTS = ("scout", "maverick")
VARIANTS = (TEACHER, *STUDENTS)
# The stage that writes each variant's final model: the teacher is not tuned with DPO.
FINAL_STAGE = {TEACHER: "rl", **{student: "dpo" for student in STUDENTS}}


class ModelsConfig(StageConfig):
    behemoth: str = Field("nano_behemoth", description="The teacher's model preset.")
    scout: str = Field("nano", description="Scout-shaped student: every layer MoE.")
    maverick: str = Field("nano_maverick", description="Maverick-shaped student: dense and MoE layers alternate.")

    @field_validator("behemoth", "scout", "maverick")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {value!r}; presets: {', '.join(MODEL_PRESETS)}")
        return value

    def preset(self, variant: str) -> str:
        return getattr(self, variant)
