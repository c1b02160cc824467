"""The optimizer's parameter groups (one per µP role) and the learning-rate schedule every training stage uses."""

from __future__ import annotations

import math

from herd.model import ModelConfig
from herd.stages.pretrain import PretrainConfig
from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4, param_group


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


def width_mult(model_config: ModelConfig, config: PretrainConfig) -> float:
    return model_config.dim / config.mup_base_dim if config.mup_base_dim else 1.0


def param_groups(model: Llama4, config: TrainingConfig, mult: float = 1.0) -> list[dict]:
    """One AdamW group per µP role: hidden and output LRs scale by 1/width_mult; decay on matrices only."""
    lr_scale = {"embedding": 1.0, "hidden": 1.0 / mult, "output": 1.0 / mult, "norms": 1.0}
    groups: dict[str, list] = {role: [] for role in lr_scale}
    for name, param in model.named_parameters():
        groups[param_group(name)].append(param)
    return [
        {"name": role, "params": params, "lr": config.lr * lr_scale[role],
         "weight_decay": 0.0 if role == "norms" else config.weight_decay}
        for role, params in groups.items() if params
    ]
