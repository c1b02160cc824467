"""Config of the ``pretrain`` stage: a Llama 4 model from scratch on the tokenizer's packed shards.

Which model each variant trains comes from the pipeline's ``models`` section; this section
holds what the variants share.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from herd.stage import Input, StageSpec
from herd.stages.models import STUDENTS, TEACHER
from herd.stages.shared import GPU_NODE, TOKENS
from herd.stages.training import TrainingConfig


class PretrainConfig(TrainingConfig):
    init_std: float = Field(0.02, gt=0)
    mup_base_dim: int | None = Field(
        None, gt=0, description="µP: the width the LR and init were tuned at; None trains in the standard parametrisation."
    )
    # The tuned proxy's other widths, each the fan-in of some hidden matrices: µP scales a
    # matrix by its own fan-in's growth. None: the proxy had the model's (not widened).
    mup_base_attention_dim: int | None = Field(
        None, gt=0, description="µP: the proxy's n_heads * head_dim (fan-in of wo); None: the model's own."
    )
    mup_base_ffn_dim: int | None = Field(
        None, gt=0,
        description="µP: the proxy's expert width (fan-in of expert down and shared w2); None: the model's own."
    )
    mup_base_dense_ffn_dim: int | None = Field(
        None, gt=0, description="µP: the proxy's dense FFN width (fan-in of dense w2); None: the model's own."
    )

    @model_validator(mode="after")
    def _proxy_needs_its_width(self) -> PretrainConfig:
        widths = ("mup_base_attention_dim", "mup_base_ffn_dim", "mup_base_dense_ffn_dim")
        stray = [name for name in widths if getattr(self, name) is not None]
        if stray and self.mup_base_dim is None:
            raise ValueError(f"{', '.join(stray)} describe the µP proxy: set mup_base_dim too, or leave them unset")
        return self


def _spec(variant: str, reads: tuple[str, ...] = (), **inputs: Input) -> StageSpec:
    return StageSpec(
        name="pretrain",
        summary="train a Llama 4 MoE from scratch on the packed token shards, resumable from checkpoints",
        config_type=PretrainConfig,
        config_section="pretrain",
        variant=variant,
        inputs={"tokens": TOKENS,
                # Retraining continues from the variant's champion instead of random weights.
                "init": Input("a model output to start from instead of random weights", optional=True),
                **inputs},
        reads=reads,
        resources=GPU_NODE,
        timeout=timedelta(hours=72),
        resumable=True,
    )


# The teacher pretrains first; its top-k over the students' windows is cached once
# (stage codistill) and both students pretrain against it (LLAMA4_SPEC §2.3).
TEACHER_SPEC = _spec(TEACHER)
STUDENT_SPECS = tuple(_spec(
    student,
    reads=("codistill",),
    teacher=Input("the teacher's pretrain output (codistill.teacher_source=online)",
                  from_stage=f"{TEACHER}.pretrain", optional=True),
    teacher_cache=Input("the codistill output: the teacher's cached top-k (codistill.teacher_source=cache)",
                        from_stage="codistill", optional=True),
) for student in STUDENTS)
