"""The optimizer's parameter groups (one per µP role) and the learning-rate schedule every training stage uses."""

from __future__ import annotations

import math
from collections.abc import Mapping

from herd.model import ModelConfig
from herd.stages.pretrain import PretrainConfig
from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4, group_mult, param_group

# One µP multiplier for every group, or one per group (what width_mult returns): see group_mult.
WidthMult = float | Mapping[str, float]
ROLES = ("embedding", "hidden", "hidden_attention", "hidden_ffn", "hidden_dense_ffn", "output", "norms")


def lr_factor(step: int, config: TrainingConfig) -> float:
    """Multiplier of the peak LR: linear warmup, then cosine to ``min_lr_ratio`` or WSD's stable + linear decay."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr_ratio
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = config.steps - int(config.decay_fraction * config.steps)
    if step < decay_start:
        return 1.0
    return 1.0 - (1.0 - floor) * (step - decay_start + 1) / max(1, config.steps - decay_start)


def width_mult(model_config: ModelConfig, config: PretrainConfig) -> dict[str, float]:
    """Each µP group's multiplier: the fan-in of its matrices over the tuned proxy's (all 1 without µP).

    The proxy is ``config.mup_base_*``: its model width, attention width (H*Dh), expert
    width and dense FFN width; one left unset is the model's own (not widened).
    """
    fan_in = {"hidden": model_config.dim, "output": model_config.dim,
              "hidden_attention": model_config.n_heads * model_config.head_dim,
              "hidden_ffn": model_config.ffn_dim, "hidden_dense_ffn": model_config.dense_ffn_dim}
    if not config.mup_base_dim:
        return dict.fromkeys(fan_in, 1.0)
    base = {"hidden": config.mup_base_dim, "output": config.mup_base_dim,
            "hidden_attention": config.mup_base_attention_dim, "hidden_ffn": config.mup_base_ffn_dim,
            "hidden_dense_ffn": config.mup_base_dense_ffn_dim}
    return {group: width / (base[group] or width) for group, width in fan_in.items()}


def param_groups(model: Llama4, config: TrainingConfig, mult: WidthMult = 1.0) -> list[dict]:
    """One AdamW group per µP role: hidden and output LRs divide by their multiplier; decay on matrices only."""
    groups: dict[str, list] = {role: [] for role in ROLES}
    for name, param in model.named_parameters():
        groups[param_group(name)].append(param)
    return [
        {"name": role, "params": params, "lr": config.lr / group_mult(mult, role),
         "weight_decay": 0.0 if role == "norms" else config.weight_decay}
        for role, params in groups.items() if params
    ]
