"""Stage ``pretrain``: a Llama 4 variant from scratch on the tokenizer's packed shards.

    herd stage pretrain --variant scout --run demo --config nano --in tokens=.herd/artifacts/tokenizer/<hash>
    torchrun --nproc_per_node 2 -m tasks.cli stage pretrain --variant scout ... --set pretrain.engine=deepspeed

The variant's model preset comes from ``models.<variant>``. Outputs: ``model.safetensors``
and ``model_config.json`` (our names), ``hf/`` (the same weights in Hugging Face format
with the tokenizer: ``transformers`` loads it), the last checkpoints under
``checkpoints/``, ``reports/tokens_by_language.csv`` and ``reports/expert_load.csv``.
Killed and restarted (an Airflow retry), it continues from the last complete checkpoint
and ends with the same weights, bit for bit, on the CPU.

The students (Scout, Maverick) co-distil from the teacher as ``codistill`` says: from the
cache stage ``codistill`` wrote (``teacher_cache``), or from the teacher's forward pass
(``teacher``, ``teacher_source=online``); the soft weights' distribution over training
goes to ``reports/codistill_weights.csv`` and a plot. Their ``loss`` is the next-token loss, as
every other run's; the mix of it with the teacher's KL that they minimise is ``objective``.

With ``--in init=URI`` (a model stage's output: retraining from the champion) training starts
from that model's weights instead of random ones; it must have this variant's shapes and
have been trained with this tokenizer (the tokenizer stage keeps one with ``--in base=``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from herd.model import model_preset
from herd.stages.codistill import CodistillConfig
from herd.stages.pretrain import PretrainConfig
from tasks.model.artifacts import WEIGHTS, load_model, model_files, write_model
from tasks.model.inputs import model_dir, tokenizer_dir
from tasks.model.info import model_info
from tasks.runtime import storage
from tasks.runtime.context import StageContext
from tasks.runtime.reports import log_csv
from tasks.runtime.step import InputError
from tasks.training.batch import BatchSource
from tasks.training.callbacks.throughput import Throughput
from tasks.training.data import TokenWindows
from tasks.training.distill.objective import CodistillObjective, make_objective
from tasks.training.distill.teachers import (CachedTeacherWindows, OnlineTeacherWindows, TeacherCache, cache_files,
                                            needs_cache)
from tasks.training.engine import world
from tasks.training.flops import peak_flops, training_flops_per_token
from tasks.training.loop import new_model, next_token_objective, train
from tasks.training.optim import width_mult
from tasks.training.precision import device_and_dtype
from tasks.training.reports import log_training_reports, training_summary

log = logging.getLogger(__name__)


def run(ctx: StageContext[PretrainConfig]) -> dict:
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-pretrain-") as tmp:
        tokenizer = tokenizer_dir(ctx.inputs["tokens"], Path(tmp))
        preset = model_preset(ctx.model_preset)
        model_config = preset.model_copy(update={"vocab_size": tokenizer.vocab_size,
                                                 "max_seq_len": max(preset.max_seq_len, config.seq_len)})
        info = model_info(model_config)
        device, _ = device_and_dtype(config)
        throughput = Throughput(training_flops_per_token(model_config, info["active_params"], config.seq_len),
                                peak_flops(device))
        log.info("pretrain %s: %s, %.1fM parameters (%.1fM active), peak %.1f GFLOP/s", ctx.variant,
                 ctx.model_preset, info["total_params"] / 1e6, info["active_params"] / 1e6, throughput.peak_flops / 1e9)
        remote = ctx.output_uri if storage.is_s3(ctx.output_uri) else None
        model = new_model(model_config, config)
        if "init" in ctx.inputs:
            _start_from(model, ctx.inputs["init"], tokenizer.folder, Path(tmp) / "init")
        batches, objective = _data_and_objective(ctx, tokenizer.tokens, Path(tmp))
        history = train(model, config, batches, ctx.workdir,
                        lambda step, metrics: ctx.tracker.log_metrics(metrics, step=step),
                        remote, throughput, width_mult(model_config, config), label=f"{ctx.variant}.pretrain",
                        objective=objective)
        if not ctx.is_main:
            return {}
        write_model(model, ctx.workdir, tokenizer.folder, tokenizer.bos_id, tokenizer.eos_id)
    log_training_reports(ctx, history, "Pretraining loss")
    if isinstance(objective, CodistillObjective):
        log_csv(ctx, "codistill_weights.csv", objective.weight_log.rows())
        ctx.tracker.log_plot("codistill_weights.png", objective.weight_log.draw)
    return {
        "variant": ctx.variant,
        "model": ctx.model_preset,
        "params_total": info["total_params"],
        "params_active": info["active_params"],
        "steps": config.steps,
        "tokens_seen": config.steps * config.batch_size * config.seq_len,
        "cpu_matmul_peak_gflops": round(throughput.peak_flops / 1e9, 2) if device.type == "cpu" else None,
        "codistill": _codistill_mode(ctx),
        "init": ctx.inputs.get("init", ""),
        **training_summary(history),  # a co-distilled student's losses are next-token, comparable with the teacher's
        "final_objective": round(history.objective_losses[-1], 4) if history.objective_losses else None,
    }


def _start_from(model, uri: str, tokenizer_folder: Path, scratch: Path) -> None:
    """Load another run's weights into ``model``: same shapes, and the same tokenizer, or token ids lose their meaning."""
    folder = storage.localize(uri, scratch, lambda relative: model_files(relative) or relative == "hf/tokenizer.json")
    theirs = folder / "hf" / "tokenizer.json"
    if not theirs.exists() or json.loads(theirs.read_text()) != json.loads((tokenizer_folder / "tokenizer.json").read_text()):
        raise InputError(f"init={uri} was trained with another tokenizer than this run's: give the tokenizer "
                         f"stage --in base={uri} so that it keeps that model's tokenizer")
    state, expected = load_file(str(folder / WEIGHTS)), model.state_dict()
    problems = sorted(set(state) ^ set(expected))
    problems += [f"{name} {tuple(state[name].shape)} (init) vs {tuple(tensor.shape)}" for name, tensor in expected.items()
                 if name in state and state[name].shape != tensor.shape]
    if problems:
        raise InputError(f"init={uri} does not fit this variant's model preset: {'; '.join(problems[:5])}")
    model.load_state_dict(state, strict=True)
    log.info("pretrain: starting from the weights of %s", uri)


def _codistill_mode(ctx) -> str:
    """How this variant learns from the teacher: ``none`` for the teacher itself and the baseline."""
    codistill: CodistillConfig = ctx.pipeline.codistill
    if "teacher_cache" not in ctx.spec.inputs or codistill.scheme == "none":
        return "none"
    return f"{codistill.scheme}/{codistill.teacher_source}"


def _data_and_objective(ctx, tokens_dir: Path, scratch: Path) -> tuple[BatchSource, object]:
    """The batches and loss of this variant: next-token on the shards, or co-distillation from the teacher."""
    config = ctx.config
    mode = _codistill_mode(ctx)
    if mode == "none":
        return TokenWindows(tokens_dir, config.seq_len, config.batch_size, config.seed), next_token_objective
    codistill: CodistillConfig = ctx.pipeline.codistill
    rank, world_size = world() if config.engine == "deepspeed" else (0, 1)
    source = "teacher_cache" if needs_cache(codistill) else "teacher"
    if source not in ctx.inputs:
        raise InputError(f"{ctx.variant}.pretrain co-distils from the teacher (codistill.scheme={codistill.scheme}, "
                         f"teacher_source={codistill.teacher_source}): give --in {source}=URI, or train on the "
                         "labels alone with --set codistill.scheme=none")
    if needs_cache(codistill):
        cache = TeacherCache(storage.localize(ctx.inputs["teacher_cache"], scratch / "teacher_cache", cache_files))
        batches = CachedTeacherWindows(tokens_dir, config.seq_len, config.batch_size, config.seed, cache,
                                       rank=rank, world_size=world_size)
        cache.check(batches, config.steps)  # refuse before training, not at the first missing window
    else:
        device, _ = device_and_dtype(config)
        teacher = load_model(model_dir(ctx.inputs["teacher"], scratch, "teacher")).to(device)
        batches = OnlineTeacherWindows(TokenWindows(tokens_dir, config.seq_len, config.batch_size, config.seed),
                                       teacher, rank=rank, world_size=world_size)
    log.info("%s.pretrain: co-distillation from the teacher, %s", ctx.variant, mode)
    return batches, make_objective(codistill, config.steps)
