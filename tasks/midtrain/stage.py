"""Stage ``midtrain``: a student continues from its pretrained weights at a longer context.

    herd stage midtrain --variant scout --run demo --config nano --in model=URI --in tokens=URI

Training sequences are ``midtrain.seq_len`` tokens of the mix (nano: 4x pretraining's),
a share of them with a pass key hidden at a random depth and asked for at the end. After
training, needle retrieval is measured over a grid of context lengths (some beyond the
trained one) and depths, with the NoPE layers' attention temperature tuning on and off:
``reports/needle_recall.csv`` and two heatmaps in MLflow. Outputs follow the model
layout of :mod:`tasks.model.artifacts`, so the next stage reads them like pretrain's.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from herd.stages.midtrain import MidtrainConfig
from tasks.midtrain.needles import NeedleMaker, NeedleWindows, needle_trials, recall, recalled
from tasks.model.artifacts import load_model, write_model
from tasks.model.inputs import model_dir, tokenizer_dir
from tasks.model.info import model_info
from tasks.model.llama4 import Llama4
from tasks.runtime import storage
from tasks.runtime.context import StageContext
from tasks.runtime.reports import log_csv
from tasks.training.callbacks.throughput import Throughput
from tasks.training.flops import peak_flops, training_flops_per_token
from tasks.training.loop import train
from tasks.training.optim import width_mult
from tasks.training.precision import device_and_dtype
from tasks.training.reports import log_training_reports, training_summary

log = logging.getLogger(__name__)


def run(ctx: StageContext[MidtrainConfig]) -> dict:
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-midtrain-") as tmp:
        scratch = Path(tmp)
        tokenizer = tokenizer_dir(ctx.inputs["tokens"], scratch)
        model = load_model(model_dir(ctx.inputs["model"], scratch), max_seq_len=config.seq_len)
        maker = NeedleMaker(tokenizer.folder / "tokenizer.json")
        tokens_dir = tokenizer.tokens
        before = recall(model.eval(), maker, tokens_dir, config.seq_len, 0.5, config.eval_trials, seed=config.seed + 1)

        info = model_info(model.config)
        device, _ = device_and_dtype(config)
        throughput = Throughput(training_flops_per_token(model.config, info["active_params"], config.seq_len),
                                peak_flops(device))
        batches = NeedleWindows(tokens_dir, maker, config.seq_len, config.batch_size, config.seed,
                                config.needle_fraction, config.needle_loss_weight)
        remote = ctx.output_uri if storage.is_s3(ctx.output_uri) else None
        mult = width_mult(model.config, ctx.pipeline.pretrain)  # keep pretraining's µP learning-rate ratios
        history = train(model.train(), config, batches, ctx.workdir,
                        lambda step, metrics: ctx.tracker.log_metrics(metrics, step=step),
                        remote, throughput, mult, label=f"{ctx.variant}.midtrain")
        if not ctx.is_main:
            return {}
        write_model(model, ctx.workdir, tokenizer.folder, tokenizer.bos_id, tokenizer.eos_id)
        grid = needle_grid(model.eval(), maker, tokens_dir, config)
    log_training_reports(ctx, history, "Mid-training loss (long context, needles weighted)")
    log_csv(ctx, "needle_recall.csv", grid)
    _heatmaps(ctx, grid, config)
    at_trained = [r["recall"] for r in grid if r["length"] == config.seq_len and r["temperature_tuning"]]
    beyond = [r for r in grid if r["length"] > config.seq_len]
    summary = {
        "variant": ctx.variant,
        "model": ctx.model_preset,
        "seq_len": config.seq_len,
        "pretrained_seq_len": ctx.pipeline.pretrain.seq_len,
        "recall_before_midtrain": before,
        "recall_at_trained_length": _mean(at_trained),
        **training_summary(history),
    }
    for tuned in (True, False):
        suffix = "temperature" if tuned else "no_temperature"
        summary[f"recall_beyond_{suffix}"] = _mean([r["recall"] for r in beyond if r["temperature_tuning"] == tuned])
    ctx.tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
    return summary


@torch.no_grad()
def needle_grid(model: Llama4, maker: NeedleMaker, tokens_dir: Path, config: MidtrainConfig) -> list[dict]:
    """Recall per (length, depth), with the NoPE layers' temperature tuning on and off (same weights).

    Temperature tuning scales only the NoPE layers' queries, so the blocks before the first NoPE
    layer compute the same for both: they run once per cell, and each variant runs the rest.
    """
    variants = {tuned: _with_temperature_tuning(model, tuned) for tuned in (True, False)}
    shared = next(layer for layer in range(model.config.n_layers + 1)
                  if layer == model.config.n_layers or model.config.is_nope(layer))
    rows = []
    for length in config.eval_lengths:
        for depth in config.eval_depths:
            found = needle_trials(maker, tokens_dir, length, depth, config.eval_trials, seed=config.seed + 1)
            inputs = found.batch[:, :-1]
            h = model.hidden(inputs, shared)
            for tuned, variant in variants.items():
                hit = recalled(found, variant(inputs, last=found.width, resume=(shared, h)).logits)
                rows.append({"temperature_tuning": tuned, "length": length, "depth": depth, "recall": hit})
                log.info("needle recall: length %d, depth %.2f, temperature tuning %s: %.2f", length, depth, tuned, hit)
    return sorted(rows, key=lambda row: not row["temperature_tuning"])  # tuned first, each in the grid's order


def _with_temperature_tuning(model: Llama4, on: bool) -> Llama4:
    if model.config.temperature_tuning == on:
        return model
    twin = Llama4(model.config.model_copy(update={"temperature_tuning": on}))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def _heatmaps(ctx, grid: list[dict], config: MidtrainConfig) -> None:
    for tuned in (True, False):
        cells = {(r["depth"], r["length"]): r["recall"] for r in grid if r["temperature_tuning"] == tuned}
        matrix = [[cells[(depth, length)] for length in config.eval_lengths] for depth in config.eval_depths]

        def draw(figure, matrix=matrix, tuned=tuned):
            axes = figure.add_subplot()
            image = axes.imshow(matrix, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            axes.set_xticks(range(len(config.eval_lengths)), [str(n) for n in config.eval_lengths])
            axes.set_yticks(range(len(config.eval_depths)), [f"{d:.0%}" for d in config.eval_depths])
            axes.axvline(x=sum(n <= config.seq_len for n in config.eval_lengths) - 0.5, color="black", linestyle="--")
            axes.set_xlabel("context length (tokens); dashed: trained length")
            axes.set_ylabel("needle depth")
            axes.set_title(f"Needle top-1 recall, temperature tuning {'on' if tuned else 'off'}")
            for i, row in enumerate(matrix):
                for j, value in enumerate(row):
                    axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
            figure.colorbar(image)

        ctx.tracker.log_plot(f"needle_recall_{'temperature' if tuned else 'no_temperature'}.png", draw)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
