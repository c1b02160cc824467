"""The single-process training loop: next-token loss plus router balance loss, AdamW, a schedule,
gradient clipping, checkpoints that resume bit for bit on the CPU.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from herd.model import ModelConfig
from herd.stages.pretrain import PretrainConfig
from tasks.model.llama4 import Llama4, param_group
from tasks.pretrain import checkpoint
from tasks.pretrain.data import TokenWindows

log = logging.getLogger(__name__)


def lr_factor(step: int, config: PretrainConfig) -> float:
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


def param_groups(model: Llama4, config: PretrainConfig, mult: float = 1.0) -> list[dict]:
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


def expert_load(router_stats) -> list[list[float]]:
    """Per MoE layer, each expert's share of the routed tokens."""
    return [(s.tokens_per_expert.float() / s.tokens_per_expert.sum()).tolist() for s in router_stats]


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    load_sum: list[list[float]] | None = None  # summed per-layer expert shares, averaged at the end
    load_count: int = 0
    tokens_by_language: Counter = field(default_factory=Counter)


def train(model_config: ModelConfig, config: PretrainConfig, tokens_dir: Path, out: Path,
          on_metrics: Callable[[int, dict], None], remote: str | None = None,
          flops_per_token: float = 0.0, peak_flops: float = 0.0) -> tuple[Llama4, History]:
    torch.manual_seed(config.seed)
    data = TokenWindows(tokens_dir, config.seq_len, config.batch_size, config.seed)
    model = Llama4(model_config)
    mult = width_mult(model_config, config)
    model.init_weights(std=config.init_std, generator=torch.Generator().manual_seed(config.seed), width_mult=mult)
    optimizer = torch.optim.AdamW(param_groups(model, config, mult), lr=config.lr, betas=(config.beta1, config.beta2),
                                  foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    start = 0
    found = checkpoint.latest(out, remote)
    if found is not None:
        start = checkpoint.restore(found, model, optimizer, scheduler)
        log.info("pretrain: resuming from %s at step %d", found.name, start)
    history = History()
    progress = _progress(config.steps, start)
    clock, tokens_since = time.monotonic(), 0
    for step in range(start, config.steps):
        batch, languages = data.batch(step)
        out_model = model(batch[:, :-1])
        lm_loss = F.cross_entropy(out_model.logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        loss = lm_loss + config.aux_loss_coef * out_model.aux_loss if config.router_balance == "aux_loss" else lm_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        if config.router_balance == "bias":
            moe_layers = [block.moe for block in model.layers if block.moe is not None]
            for moe, stats in zip(moe_layers, out_model.router):
                moe.update_selection_bias(stats.tokens_per_expert, config.bias_update_rate)

        tokens_since += batch[:, 1:].numel()
        history.tokens_by_language.update(languages)
        history.steps.append(step)
        history.losses.append(lm_loss.item())
        loads = expert_load(out_model.router)
        if history.load_sum is None:
            history.load_sum = [[0.0] * len(layer) for layer in loads]
        for summed, layer in zip(history.load_sum, loads):
            for e, share in enumerate(layer):
                summed[e] += share
        history.load_count += 1
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.monotonic() - clock
            tokens_per_second = tokens_since / max(elapsed, 1e-9)
            metrics = {
                "loss": lm_loss.item(),
                "aux_loss": out_model.aux_loss.item(),
                "grad_norm": float(grad_norm),
                **{f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups},
                "tokens_per_second": tokens_per_second,
                **{f"expert_load_cv/layer{i}": _cv(layer) for i, layer in enumerate(loads)},
            }
            if flops_per_token and peak_flops:
                metrics["mfu"] = tokens_per_second * flops_per_token / peak_flops
            on_metrics(done, metrics)
            clock, tokens_since = time.monotonic(), 0
        if done % config.checkpoint_every == 0 or done == config.steps:
            saved = checkpoint.save(out, done, model, optimizer, scheduler, remote)
            log.info("pretrain: step %d, loss %.4f, checkpoint %s", done, lm_loss.item(), saved.name)
        progress(done, lm_loss.item())
    return model, history


def _cv(shares: list[float]) -> float:
    """Coefficient of variation of the expert load: 0 is perfectly balanced."""
    mean = sum(shares) / len(shares)
    return (sum((s - mean) ** 2 for s in shares) / len(shares)) ** 0.5 / mean if mean else 0.0


def _progress(total: int, start: int) -> Callable[[int, float], None]:
    """A progress bar on a terminal; nothing in a log file (metrics are logged anyway)."""
    if not sys.stderr.isatty():
        return lambda step, loss: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="pretrain", unit="step")

    def update(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step >= total:
            bar.close()

    return update
