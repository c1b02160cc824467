"""Config of the ``pretrain`` stage: a Llama 4 model from scratch on the tokenizer's packed shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from herd.config import StageConfig, operational
from herd.model import MODEL_PRESETS


class PretrainConfig(StageConfig):
    model: str = Field("nano", description="A model preset (herd model info PRESET); vocab comes from the tokenizer.")
    seq_len: int = Field(256, ge=8)
    batch_size: int = Field(4, ge=1)
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
    init_std: float = Field(0.02, gt=0)
    mup_base_dim: int | None = Field(
        None, gt=0, description="µP: the width the LR and init were tuned at; None trains in the standard parametrisation."
    )
    seed: int = 0
    checkpoint_every: int = operational(20, "Steps between checkpoints; resuming reproduces the same weights.")
    log_every: int = operational(5, "Steps between metric logs.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_PRESETS:
            raise ValueError(f"unknown model preset {value!r}; presets: {', '.join(MODEL_PRESETS)}")
        return value
