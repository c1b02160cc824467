"""The training loop every model stage uses: an objective plus router balance, stepped by an engine, with the
concerns around it (metrics, throughput, expert load, router bias, checkpoints, progress) as callbacks.

The loop is the same for one process and for DeepSpeed data parallelism (see
:mod:`tasks.training.engine`): each rank takes its rows of the step's batch, which is a
pure function of the step, so resuming needs only the step number. Checkpoints resume bit
for bit on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from herd.model import ModelConfig
from herd.stages.pretrain import PretrainConfig
from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4, Output
from tasks.training.batch import Batch, BatchSource
from tasks.training.callbacks.callback import Callback, Step, Trainer
from tasks.training.callbacks.checkpointing import Checkpointer
from tasks.training.callbacks.expert_load import ExpertLoad
from tasks.training.callbacks.metrics import MetricsLog
from tasks.training.callbacks.progress import Progress
from tasks.training.callbacks.router_bias import RouterBias
from tasks.training.callbacks.throughput import Throughput, ThroughputMonitor
from tasks.training.engine import make_engine
from tasks.training.history import History
from tasks.training.optim import WidthMult, lr_factor, param_groups, width_mult
from tasks.training.precision import convert_from_fp8, convert_to_fp8, device_and_dtype
from tasks.training.router import balanced_loss, expert_counts, over_capacity

log = logging.getLogger(__name__)

# The objective: (out_model, targets, batch, rows, step) -> (loss, metrics); see train().
Objective = Callable[[Output, torch.Tensor, Batch, slice, int], tuple[torch.Tensor, dict[str, float]]]
# The metric in which an objective that mixes the next-token loss with other terms (co-distillation) reports that
# part: the run logs it as ``loss``, as a plain run does, and the mix as ``objective``.
NEXT_TOKEN_LOSS = "next_token_loss"


def new_model(model_config: ModelConfig, config: PretrainConfig) -> Llama4:
    """A freshly initialised model, the same for a given seed (so a resumed run starts from the same one).

    It is built on the meta device. Under DeepSpeed it stays there: the engine first keeps only this
    rank's experts, then materialises and initialises what is left (:meth:`Llama4.materialize`),
    so no rank ever holds every expert. Otherwise it is materialised here, on the CPU.
    """
    torch.manual_seed(config.seed)
    with torch.device("meta"):
        model = Llama4(model_config)
    model.init_weights(std=config.init_std, generator=torch.Generator().manual_seed(config.seed),
                       width_mult=width_mult(model_config, config))
    if config.engine != "deepspeed":
        model.materialize("cpu")
    return model


def next_token_objective(out_model: Output, targets: torch.Tensor, batch: Batch, rows: slice,
                         step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The default objective: next-token cross-entropy, weighted per target when the batch says so.

    When the forward computed logits only at the weighted targets (``out_model.where``, see
    :func:`weighted_positions`), the targets and weights are taken at those positions too: the
    targets left out weigh nothing, so the loss is the same, up to the order of the sum.
    """
    weights = None if batch.weights is None else batch.weights[rows].to(targets.device)
    if out_model.where is not None:
        targets, weights = targets[out_model.where], weights[out_model.where]
    return _lm_loss(out_model.logits, targets, weights), {}


def weighted_positions(batch: Batch, rows: slice, objective: Objective, device: torch.device) -> torch.Tensor | None:
    """The inputs whose targets weigh anything, for the forward to compute logits at those alone; None for all.

    SFT weighs only the assistant's tokens, and the final norm, the output head and the loss are
    a large part of a nano step. Only the default objective reads weights, so only it is given
    the selected logits; a batch that weighs every target (midtrain's needles) runs the whole
    head as before.
    """
    if objective is not next_token_objective or batch.weights is None:
        return None
    where = batch.weights[rows].to(device) != 0
    return None if bool(where.all()) else where


def callbacks(config: TrainingConfig, on_metrics: Callable[[int, dict], None], throughput: Throughput, out: Path,
              remote: str | None) -> list[Callback]:
    """The concerns of every run in hook order: the bias first (a checkpoint holds it), measures before the log."""
    bias = [RouterBias()] if config.router_balance == "bias" else []
    return [*bias, ExpertLoad(), ThroughputMonitor(throughput), MetricsLog(on_metrics), Checkpointer(out, remote),
            Progress()]


def train(model: Llama4, config: TrainingConfig, batches: BatchSource, out: Path,
          on_metrics: Callable[[int, dict], None], remote: str | None = None,
          throughput: Throughput = Throughput(), mult: WidthMult = 1.0, label: str = "pretrain",
          objective: Objective = next_token_objective) -> History:
    """Train ``model`` in place for ``config.steps`` steps, resuming from the newest checkpoint under ``out``.

    ``objective(out_model, targets, batch, rows, step) -> (loss, metrics)`` is the model loss
    before router balance: next-token cross-entropy by default, co-distillation or a
    post-training loss otherwise. ``rows`` selects this rank's rows of ``batch``. When
    ``metrics`` hold :data:`NEXT_TOKEN_LOSS`, the logged and recorded ``loss`` is that, and
    the loss the optimiser saw is logged as ``objective`` (``History.objective_losses``).
    """
    device, dtype = device_and_dtype(config)

    def to_fp8(model: Llama4) -> None:
        plan = convert_to_fp8(model)
        log.info("%s: FP8 linears %d, FP8 expert blocks %d, kept bf16: %s", label, len(plan.linears),
                 len(plan.experts), ", ".join(plan.kept))

    fp8 = to_fp8 if config.precision == "fp8" else None
    if not any(param.is_meta for param in model.parameters()):  # on meta, the engine materialises it
        model.to(device)
        if fp8:
            fp8(model)
            fp8 = None
    engine = make_engine(model, param_groups(model, config, mult), config, lambda step: lr_factor(step, config),
                         bf16=False, device=device, prepare=fp8)
    resumed = engine.resume(out, remote)
    start = resumed.step
    if start:
        log.info("%s: resuming at step %d", label, start)
    # The history of the steps before the checkpoint comes with it: the reports cover the whole run.
    history = History.from_json(resumed.documents["history"]) if "history" in resumed.documents else History()
    trainer = Trainer(engine, config, history, label, start)
    hooks = callbacks(config, on_metrics, throughput, out, remote)
    for hook in hooks:
        hook.pre_train(trainer)
    for step in range(start, config.steps):
        batch = batches.batch(step)
        rows = slice(engine.rank, None, engine.world_size)
        tokens = batch.tokens[rows].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out_model = engine(tokens[:, :-1], where=weighted_positions(batch, rows, objective, device))
        lm_loss, extra_metrics = objective(out_model, tokens[:, 1:], batch, rows, step)
        grad_norm = engine.backward_and_step(balanced_loss(lm_loss, out_model.aux_loss, config))
        done, loss, mixed = step + 1, lm_loss.item(), None
        if NEXT_TOKEN_LOSS in extra_metrics:
            mixed, loss = loss, extra_metrics.pop(NEXT_TOKEN_LOSS)
            extra_metrics["objective"] = mixed
        trainer.history.record(step, loss, batch.languages, objective=mixed)
        logs = done % config.log_every == 0 or done == config.steps
        metrics = {"loss": loss, "aux_loss": out_model.aux_loss.item(), "grad_norm": grad_norm,
                   **{f"lr/{group['name']}": group["lr"] for group in engine.param_groups},
                   **extra_metrics} if logs else None
        finished = Step(done, batch, loss, grad_norm, expert_counts(out_model, engine.world_size),
                        over_capacity(out_model, engine.world_size), metrics)
        for hook in hooks:
            hook.post_step(trainer, finished)
    for hook in hooks:
        hook.post_train(trainer)
    engine.finish()  # every weight back in ``model`` (gathered from ZeRO-3 shards and expert ranks)
    if config.precision == "fp8":
        convert_from_fp8(model)
    model.to("cpu")
    return trainer.history


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean next-token cross-entropy (weighted); logits (B, S, V) with targets (B, S), or (N, V) with (N,)."""
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.flatten(), reduction="none")
    if weights is None:
        return per_token.mean()
    weights = weights.flatten().to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum()
