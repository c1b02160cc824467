"""Stage ``pretrain``: a Llama 4 model from scratch on the tokenizer's packed shards.

    herd stage pretrain --run demo --config nano --in tokens=.herd/artifacts/tokenizer/<hash>
    herd stage pretrain --run demo --config nano --in tokens=... --set pretrain.model=nano_maverick

Outputs: ``model.safetensors`` and ``model_config.json`` (our names), ``hf/`` (the same
weights in Hugging Face format with the tokenizer: ``transformers`` loads it), the last
checkpoints under ``checkpoints/``, ``reports/tokens_by_language.csv`` and
``reports/expert_load.csv``. Killed and restarted (an Airflow retry), it continues from
the last complete checkpoint and ends with the same weights, bit for bit, on the CPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from herd.model import model_preset
from herd.stages.pretrain import PretrainConfig
from tasks.model import hf
from tasks.model.info import model_info
from tasks.pretrain.flops import peak_flops, training_flops_per_token
from tasks.pretrain.train import History, train
from tasks.runtime import storage
from tasks.runtime.reports import log_csv

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _reports(ctx, history: History) -> None:
    total = sum(history.tokens_by_language.values()) or 1
    log_csv(ctx, "tokens_by_language.csv", [
        {"lang": lang, "tokens": count, "share": round(count / total, 6)}
        for lang, count in sorted(history.tokens_by_language.items(), key=lambda kv: -kv[1])
    ])
    if not history.load_sum:
        return
    mean_load = [[share / history.load_count for share in layer] for layer in history.load_sum]
    log_csv(ctx, "expert_load.csv", [
        {"moe_layer": i, **{f"expert{e}": round(share, 6) for e, share in enumerate(layer)}}
        for i, layer in enumerate(mean_load)
    ])

    def loss_curve(figure):
        axes = figure.add_subplot()
        axes.plot(history.steps, history.losses)
        axes.set_xlabel("step")
        axes.set_ylabel("next-token loss")
        axes.set_title("Pretraining loss")

    def load_map(figure):
        axes = figure.add_subplot()
        image = axes.imshow(mean_load, aspect="auto", cmap="viridis")
        axes.set_xlabel("expert")
        axes.set_ylabel("MoE layer")
        axes.set_title("Share of routed tokens per expert (mean over training)")
        figure.colorbar(image)

    ctx.tracker.log_plot("loss.png", loss_curve)
    ctx.tracker.log_plot("expert_load.png", load_map)


def run(ctx) -> dict:
    config: PretrainConfig = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-pretrain-") as tmp:
        tokenizer_dir = storage.localize(ctx.inputs["tokens"], Path(tmp),
                                         lambda relative: relative.startswith("tokens/") or relative in TOKENIZER_FILES)
        index = json.loads((tokenizer_dir / "tokens" / "index.json").read_text())
        preset = model_preset(config.model)
        model_config = preset.model_copy(update={"vocab_size": index["vocab_size"],
                                                 "max_seq_len": max(preset.max_seq_len, config.seq_len)})
        info = model_info(model_config)
        total, active = info["total_params"], info["active_params"]
        flops = training_flops_per_token(model_config, active, config.seq_len)
        peak = peak_flops(torch.device("cpu"))
        log.info("pretrain: %s, %.1fM parameters (%.1fM active), peak %.1f GFLOP/s measured",
                 config.model, total / 1e6, active / 1e6, peak / 1e9)
        remote = ctx.output_uri if storage.is_s3(ctx.output_uri) else None
        logged: list[dict] = []

        def on_metrics(step: int, metrics: dict) -> None:
            logged.append(metrics)
            ctx.tracker.log_metrics(metrics, step=step)

        model, history = train(model_config, config, tokenizer_dir / "tokens", ctx.workdir, on_metrics,
                               remote, flops, peak)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ctx.workdir / "model.safetensors"))
        (ctx.workdir / "model_config.json").write_text(json.dumps(model_config.model_dump(mode="json"), indent=2))
        export = hf.export(model, ctx.workdir / "hf", bos_id=index["bos_id"], eos_id=index["eos_id"])
        for name in TOKENIZER_FILES:
            shutil.copyfile(tokenizer_dir / name, export / name)
    _reports(ctx, history)
    losses = history.losses
    return {
        "model": config.model,
        "params_total": total,
        "params_active": active,
        "steps": config.steps,
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(losses[-1], 4) if losses else None,
        "tokens_seen": config.steps * config.batch_size * config.seq_len,
        "languages_seen": len(history.tokens_by_language),
        "cpu_matmul_peak_gflops": round(peak / 1e9, 2),
        "tokens_per_second": _mean(m["tokens_per_second"] for m in logged),
        "mfu": _mean(m.get("mfu", 0.0) for m in logged),
    }


def _mean(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None
