"""The training loop every model stage uses: next-token loss plus router balance loss, a schedule,
gradient clipping, metrics, and checkpoints that resume bit for bit on the CPU.

The loop is the same for one process and for DeepSpeed data parallelism (see
:mod:`tasks.training.engine`): each rank takes its rows of the step's batch, which is a
pure function of the step, so resuming needs only the step number.
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
from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4, Output, param_group
from tasks.training.batch import Batch, BatchSource
from tasks.training.engine import make_engine

log = logging.getLogger(__name__)


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


def new_model(model_config: ModelConfig, config: PretrainConfig) -> Llama4:
    """A freshly initialised model, the same for a given seed (so a resumed run starts from the same one)."""
    torch.manual_seed(config.seed)
    model = Llama4(model_config)
    model.init_weights(std=config.init_std, generator=torch.Generator().manual_seed(config.seed),
                       width_mult=width_mult(model_config, config))
    return model


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
    tokens_per_second: list[float] = field(default_factory=list)
    mfu: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Throughput:
    """What MFU is measured against: model FLOPs per token and the hardware's peak FLOP/s."""

    flops_per_token: float = 0.0
    peak_flops: float = 0.0


def device_and_dtype(config: TrainingConfig) -> tuple[torch.device, torch.dtype]:
    """bf16 autocast on a GPU, fp32 on the CPU, unless the config says otherwise."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.precision in {"fp8", "bf16"} or (config.precision == "auto" and device.type == "cuda"):
        return device, torch.bfloat16
    return device, torch.float32


def next_token_objective(out_model: Output, targets: torch.Tensor, batch: Batch, rows: slice,
                         step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The default objective: next-token cross-entropy, weighted per target when the batch says so."""
    weights = None if batch.weights is None else batch.weights[rows].to(targets.device)
    return _lm_loss(out_model.logits, targets, weights), {}


def train(model: Llama4, config: TrainingConfig, batches: BatchSource, out: Path,
          on_metrics: Callable[[int, dict], None], remote: str | None = None,
          throughput: Throughput = Throughput(), mult: float = 1.0, label: str = "pretrain",
          objective=next_token_objective) -> History:
    """Train ``model`` in place for ``config.steps`` steps, resuming from the newest checkpoint under ``out``.

    ``objective(out_model, targets, batch, rows, step) -> (loss, metrics)`` is the model loss
    before router balance: next-token cross-entropy by default, co-distillation or a
    post-training loss otherwise. ``rows`` selects this rank's rows of ``batch``.
    """
    device, dtype = device_and_dtype(config)
    model.to(device)
    if config.precision == "fp8":
        from tasks.training.fp8 import convert_to_fp8

        convert_to_fp8(model)
    engine = make_engine(model, param_groups(model, config, mult), config, lambda step: lr_factor(step, config),
                         bf16=False)
    start = engine.resume(out, remote)
    if start:
        log.info("%s: resuming at step %d", label, start)
    history = History()
    progress = _progress(label, config.steps, start) if engine.rank == 0 else (lambda step, loss: None)
    clock, tokens_since = time.monotonic(), 0
    for step in range(start, config.steps):
        batch = batches.batch(step)
        rows = slice(engine.rank, None, engine.world_size)
        tokens = batch.tokens[rows].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out_model = engine(tokens[:, :-1])
        lm_loss, extra_metrics = objective(out_model, tokens[:, 1:], batch, rows, step)
        loss = lm_loss + config.aux_loss_coef * out_model.aux_loss if config.router_balance == "aux_loss" else lm_loss
        grad_norm = engine.backward_and_step(loss)
        counts = [stats.tokens_per_expert for stats in out_model.router]
        if engine.world_size > 1 and counts:
            counts = _all_ranks_sum(counts)
        if config.router_balance == "bias":
            moe_layers = [block.moe for block in engine.module.layers if block.moe is not None]
            for moe, layer_counts in zip(moe_layers, counts):
                moe.update_selection_bias(layer_counts, config.bias_update_rate)

        tokens_since += batch.tokens[:, 1:].numel()
        history.tokens_by_language.update(batch.languages)
        history.steps.append(step)
        history.losses.append(lm_loss.item())
        loads = [(c.float() / c.sum()).tolist() for c in counts]
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
                "grad_norm": grad_norm,
                **{f"lr/{group['name']}": group["lr"] for group in engine.param_groups},
                "tokens_per_second": tokens_per_second,
                **extra_metrics,
                **{f"expert_load_cv/layer{i}": _cv(layer) for i, layer in enumerate(loads)},
            }
            history.tokens_per_second.append(tokens_per_second)
            if throughput.flops_per_token and throughput.peak_flops:
                # Per device: each rank's share of the tokens against one device's peak.
                per_device = tokens_per_second / engine.world_size
                metrics["mfu"] = per_device * throughput.flops_per_token / throughput.peak_flops
                history.mfu.append(metrics["mfu"])
            on_metrics(done, metrics)
            clock, tokens_since = time.monotonic(), 0
        if done % config.checkpoint_every == 0 or done == config.steps:
            saved = engine.save(out, done, remote)
            log.info("%s: step %d, loss %.4f, checkpoint %s", label, done, lm_loss.item(), saved.name)
        progress(done, lm_loss.item())
    engine.finish()  # every weight back in ``model`` (gathered from ZeRO-3 shards and expert ranks)
    model.to("cpu")
    return history


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    if weights is None:
        return per_token.mean()
    weights = weights.flatten().to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum()


def _all_ranks_sum(counts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Expert loads over every rank, so the selection bias stays the same on all of them."""
    import torch.distributed as dist

    stacked = torch.stack(counts).float()
    dist.all_reduce(stacked)
    return list(stacked.long().unbind(0))


def _cv(shares: list[float]) -> float:
    """Coefficient of variation of the expert load: 0 is perfectly balanced."""
    mean = sum(shares) / len(shares)
    return (sum((s - mean) ** 2 for s in shares) / len(shares)) ** 0.5 / mean if mean else 0.0


def _progress(label: str, total: int, start: int) -> Callable[[int, float], None]:
    """A progress bar on a terminal; nothing in a log file (metrics are logged anyway)."""
    if not sys.stderr.isatty():
        return lambda step, loss: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc=label, unit="step")

    def update(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step >= total:
            bar.close()

    return update
