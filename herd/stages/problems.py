"""Config of the ``problems`` stage: prompt/answer sets with checkers for SFT, RL and DPO.

Every item is generated from what the project already has (the aligned UDHR articles) or
from a seeded generator (arithmetic, strings, small code tasks), so nothing is downloaded.
Counts are per capability, for train and eval together; the held-out share goes to eval.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from herd.config import StageConfig
from herd.stage import Input, Resources, StageSpec


Iso639_3 = Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]


class ProblemsConfig(StageConfig):
    seed: int = 0
    count_arithmetic: int = Field(2000, ge=0)
    count_strings: int = Field(2000, ge=0)
    count_code: int = Field(300, ge=0)
    count_translate: int = Field(1000, ge=0)
    count_language_id: int = Field(1500, ge=0)
    count_continue: int = Field(1500, ge=0)
    heldout_fraction: float = Field(
        0.1, gt=0, lt=1,
        description="Share held out for eval: of synthetic items by content hash, of UDHR articles by article number.",
    )
    languages: list[Iso639_3] = Field(
        default_factory=list,
        description="ISO 639-3 codes (e.g. 'eng') for language_id and continue; empty takes every language of the corpus.",
    )
    translate_languages: list[Iso639_3] = Field(
        default_factory=lambda: ["cmn", "deu", "eng", "fra", "rus", "spa"],
        description="Translation goes between every ordered pair of these (those missing from the corpus are skipped).",
    )
    max_text_chars: int = Field(
        300, ge=20, description="Longest UDHR passage used as a translation source or reference (nano windows are short)."
    )
    max_operand_digits: int = Field(4, ge=1, le=12, description="Digits of the largest arithmetic operand.")
    max_word_length: int = Field(12, ge=2, le=40, description="Longest word in string tasks.")
    code_time_limit_s: float = Field(2.0, gt=0, le=60, description="Wall-clock limit for running one code answer.")
    code_memory_mb: int = Field(256, ge=64, le=8192, description="Address-space limit of the sandboxed code process.")
    allow_unconfined: bool = Field(
        False, description="Run code checks even where the sandbox cannot confine them (no Landlock or seccomp): "
                           "carried in each code item, logged as a warning at every check process's first such run "
                           "and recorded (code_missing) by the stages that check. Off: such checks refuse to run.",
    )

    @field_validator("languages", "translate_languages")
    @classmethod
    def _as_set(cls, value: list[str]) -> list[str]:
        # Order and repeats change no item, so they must not change the output path either.
        return sorted(set(value))


SPEC = StageSpec(
    name="problems",
    summary="build prompt/answer sets with checkers (UDHR tasks, arithmetic, strings, sandboxed code)",
    config_type=ProblemsConfig,
    config_section="problems",
    inputs={"udhr": Input("UDHR JSONL (aligned articles), file, folder or s3:// prefix; empty for the seed corpus")},
    resources=Resources(cpu="2", memory="4Gi"),
)
