"""The Llama 4 text decoder's shape, and the presets from a laptop-sized model to the published ones.

Field names follow the architecture, not one codebase; ``tasks/model/hf.py`` maps them to
Hugging Face's ``Llama4TextConfig``. Layer roles follow Llama 4 (LLAMA4_SPEC §1.1, §1.3):
layer ``i`` is MoE when ``(i + 1) % moe_every == 0`` and NoPE (full attention, no RoPE,
temperature-tuned queries) when ``(i + 1) % nope_every == 0``; the other layers use RoPE
with chunked local attention.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import Field, model_validator

from herd.config import ConfigError, StageConfig


class RopeScaling(StageConfig):
    """Llama-3-style frequency scaling (Scout only)."""

    factor: float = 16.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 1.0
    original_max_position_embeddings: int = 8192


class ModelConfig(StageConfig):
    vocab_size: int = Field(8300, gt=0)
    dim: int = Field(256, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    n_kv_heads: int = Field(2, gt=0)
    head_dim: int = Field(64, gt=0)
    ffn_dim: int = Field(512, gt=0, description="Width of each routed expert and of the shared expert.")
    dense_ffn_dim: int = Field(1024, gt=0, description="Width of the FFN on layers without MoE.")
    n_experts: int = Field(4, gt=0)
    top_k: int = Field(1, gt=0)
    capacity_factor: float | None = Field(
        None, gt=0, description="Each expert takes at most ceil(factor * routed rows / n_experts) rows of a "
                                "training batch; null: no capacity, every row is kept.")
    over_capacity: Literal["drop", "keep"] = Field(
        "drop", description="Rows past an expert's capacity: dropped (the token keeps its shared expert) or kept; "
                            "counted either way.")
    moe_every: int = Field(1, gt=0, description="1: every layer is MoE (Scout); 2: dense and MoE alternate (Maverick).")
    nope_every: int = Field(4, gt=0)
    chunk_size: int = Field(64, gt=0, description="Attention chunk of the RoPE layers.")
    use_qk_norm: bool = True
    rope_theta: float = 500_000.0
    rope_scaling: RopeScaling | None = None
    temperature_tuning: bool = True
    attn_scale: float = 0.1
    floor_scale: int = Field(8192, gt=0, description="Temperature tuning starts here: Llama 4's pretraining context.")
    norm_eps: float = 1e-5
    max_seq_len: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _shapes(self) -> "ModelConfig":
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k ({self.top_k}) exceeds n_experts ({self.n_experts})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.over_capacity == "keep" and self.capacity_factor is None:
            raise ValueError("over_capacity 'keep' counts the rows past a capacity: set capacity_factor too")
        return self

    def is_moe(self, layer: int) -> bool:
        return (layer + 1) % self.moe_every == 0

    def is_nope(self, layer: int) -> bool:
        return (layer + 1) % self.nope_every == 0


def nano() -> ModelConfig:
    """Scout-shaped (every layer MoE, QK norm), seconds per step on a laptop CPU.

    ``floor_scale`` is the nano pretraining context (256), as Llama 4's 8192 is its own:
    temperature tuning then acts where mid-training and long-context evaluation go.
    """
    return ModelConfig(floor_scale=256)


def nano_maverick() -> ModelConfig:
    """Maverick-shaped nano: dense and MoE layers alternate, more experts, no QK norm."""
    return ModelConfig(n_experts=8, moe_every=2, use_qk_norm=False, floor_scale=256)


def nano_behemoth() -> ModelConfig:
    """The nano teacher: Behemoth's recipe (16 experts, every layer MoE), wider and deeper than the students."""
    return ModelConfig(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=768, dense_ffn_dim=1536,
                       n_experts=16, floor_scale=256)


_SMALL = dict(vocab_size=32_768 + 300, dim=1024, n_layers=16, n_heads=16, n_kv_heads=4, head_dim=64,
              ffn_dim=1024, dense_ffn_dim=4096, chunk_size=2048, max_seq_len=4096, floor_scale=4096)


def small() -> ModelConfig:
    """About 1B total, 0.2B active parameters: one H100."""
    return ModelConfig(**_SMALL, n_experts=16)


def small_maverick() -> ModelConfig:
    """Maverick's layout at ``small``'s width: alternating dense and 64-expert MoE layers."""
    return ModelConfig(**_SMALL, n_experts=64, moe_every=2, use_qk_norm=False)


def small_behemoth() -> ModelConfig:
    """The ``small`` teacher: about 4x the students' active parameters, one H100 node."""
    return ModelConfig(**{**_SMALL, "dim": 2048, "n_layers": 24, "n_heads": 32, "n_kv_heads": 8,
                          "ffn_dim": 2048, "dense_ffn_dim": 8192}, n_experts=16)


_PUBLISHED = dict(vocab_size=202_048, dim=5120, n_layers=48, n_heads=40, n_kv_heads=8, head_dim=128,
                  ffn_dim=8192, dense_ffn_dim=16_384, chunk_size=8192, max_seq_len=262_144)


def scout() -> ModelConfig:
    """Llama 4 Scout 17B-16E: 109B total, 17B active."""
    return ModelConfig(**_PUBLISHED, n_experts=16, moe_every=1, use_qk_norm=True, rope_scaling=RopeScaling())


def maverick() -> ModelConfig:
    """Llama 4 Maverick 17B-128E: 400B total, 17B active."""
    return ModelConfig(**_PUBLISHED, n_experts=128, moe_every=2, use_qk_norm=False)


def behemoth() -> ModelConfig:
    """A teacher of Behemoth's published size (16 experts, ~288B active, ~2T total).

    Meta published only those three numbers; depth and widths here are ours, chosen to
    land on them with Scout's layer recipe.
    """
    return ModelConfig(vocab_size=202_048, dim=16_384, n_layers=96, n_heads=128, n_kv_heads=8, head_dim=128,
                       ffn_dim=23_552, dense_ffn_dim=47_104, n_experts=16, moe_every=1, use_qk_norm=True,
                       chunk_size=8192, max_seq_len=262_144)


MODEL_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "nano": nano, "nano_maverick": nano_maverick, "nano_behemoth": nano_behemoth,
    "small": small, "small_maverick": small_maverick, "small_behemoth": small_behemoth,
    "scout": scout, "maverick": maverick, "behemoth": behemoth,
}


def model_preset(name: str) -> ModelConfig:
    try:
        return MODEL_PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; presets: {', '.join(MODEL_PRESETS)}") from None
