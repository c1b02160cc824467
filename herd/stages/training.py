"""What every training stage shares: batch shape, optimiser, schedule, router balance, engine, checkpoints.

``pretrain`` and ``midtrain`` (and the post-training stages) subclass :class:`TrainingConfig`
and set their own defaults; the training loop in ``tasks/training/loop.py`` reads only
these fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from herd.config import StageConfig, operational


class TrainingConfig(StageConfig):
    seq_len: int = Field(256, ge=8)
    batch_size: int = Field(4, ge=1, description="Sequences per step over all ranks.")
    steps: int = Field(40, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["cosine", "wsd"] = Field("cosine", description="wsd: warmup, stable, then linear decay.")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="Share of steps in the final decay of 'wsd'.")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    router_balance: Literal["aux_loss", "bias"] = Field(
        "aux_loss", description="aux_loss: a balance loss; bias: aux-loss-free, a selection bias nudged towards balance."
    )
    aux_loss_coef: float = Field(0.01, ge=0, description="Weight of the router load-balancing loss (aux_loss).")
    bias_update_rate: float = Field(1e-3, gt=0, description="Step of the selection-bias update (bias).")
    precision: Literal["auto", "fp32", "bf16", "fp8"] = Field(
        "auto",
        description="auto: bf16 on a GPU, fp32 on the CPU; fp8: torchao float8 linears, Hopper GPUs only.",
    )
    seed: int = 0
    engine: Literal["plain", "deepspeed"] = operational(
        "plain", "plain: one process; deepspeed: data parallel over the ranks torchrun starts, ZeRO sharded."
    )
    zero_stage: int = operational(2, "DeepSpeed ZeRO stage 0-3 (engine=deepspeed).")
    expert_parallel_size: int = operational(
        1, "Ranks that split each MoE layer's routed experts between them (engine=deepspeed, zero_stage=3); "
           "divides the number of ranks and of experts.")
    activation_checkpointing: bool = operational(
        False, "Keep only each block's input and recompute the block in backward: less memory, more compute.")
    checkpoint_every: int = operational(20, "Steps between checkpoints; resuming reproduces the same weights.")
    log_every: int = operational(5, "Steps between metric logs.")

    @model_validator(mode="after")
    def _parallelism(self) -> TrainingConfig:
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, not {self.zero_stage}")
        if self.expert_parallel_size < 1:
            raise ValueError(f"expert_parallel_size must be at least 1, not {self.expert_parallel_size}")
        if self.expert_parallel_size > 1 and (self.engine != "deepspeed" or self.zero_stage != 3):
            # DeepSpeed's stage 1/2 optimizer partitions expert parameters over expert groups only
            # for its own MoE layer classes; its stage 3 reads the placement from the parameters.
            raise ValueError("expert_parallel_size > 1 needs engine=deepspeed and zero_stage=3")
        return self
