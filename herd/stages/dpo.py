"""Config of the ``dpo`` stage: lightweight DPO on on-policy pairs after RL (LLAMA4_SPEC §2.4, §5).

The RL policy samples ``samples_per_prompt`` completions for each of ``prompts`` hard
prompts; the checker scores them; the best and the worst (``pairs_per_prompt`` of them,
best against worst, second best against second worst, ...) become chosen and rejected,
ties skipped. DPO then trains for ``steps`` steps of ``batch_size`` pairs against the
frozen starting policy. Llama 4 publishes no size for its "lightweight" DPO; here it is a
few hundred steps at most.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, model_validator

from herd.config import operational
from herd.stage import Input, StageSpec
from herd.stages.models import STUDENTS
from herd.stages.shared import ONE_GPU, POST_TRAINING_INPUTS
from herd.stages.training import TrainingConfig


class DPOConfig(TrainingConfig):
    seq_len: int = Field(256, ge=8, description="Longest prompt plus completion; longer prompts are skipped.")
    batch_size: int = Field(8, ge=1, description="Pairs per step.")
    steps: int = Field(60, ge=1, le=500, description="Lightweight: a few hundred steps at most.")
    lr: float = Field(5e-5, gt=0)
    warmup_steps: int = Field(5, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    beta: float = Field(0.1, gt=0, description="DPO's beta: the implicit reward is beta * log(pi / pi_ref).")
    prompts: int = Field(64, ge=1, description="Hard prompts sampled on (the first N given).")
    samples_per_prompt: int = Field(8, ge=2, description="Completions sampled per prompt and scored.")
    pairs_per_prompt: int = Field(1, ge=1, description="Pairs per prompt: i-th best against i-th worst.")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    sample_rows: int = operational(64, "Largest batch of rows sampled together (prompts of one length).")
    reward_workers: int = operational(8, "Threads running checkers.")
    checkpoint_every: int = operational(50, "Steps between checkpoints; resuming reproduces the same weights.")

    @model_validator(mode="after")
    def _consistent(self) -> "DPOConfig":
        if 2 * self.pairs_per_prompt > self.samples_per_prompt:
            raise ValueError(f"pairs_per_prompt ({self.pairs_per_prompt}) needs at least twice as many "
                             f"samples_per_prompt ({self.samples_per_prompt})")
        if self.max_new_tokens >= self.seq_len:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) leaves no room for a prompt "
                             f"in seq_len ({self.seq_len})")
        if self.engine != "plain":
            raise ValueError("dpo runs on the plain engine (one process); engine=deepspeed is not supported")
        return self


SPECS = tuple(StageSpec(
    name="dpo",
    summary="lightweight DPO on on-policy pairs from the RL policy's hard prompts",
    config_type=DPOConfig,
    config_section="dpo",
    variant=student,
    inputs={"model": Input("the variant's RL output", from_stage=f"{student}.rl"), **POST_TRAINING_INPUTS},
    resources=ONE_GPU,
    timeout=timedelta(hours=12),
    resumable=True,
) for student in STUDENTS)
