"""Stage ``pretrain``: a Llama 4 variant from scratch on the tokenizer's packed shards.

    herd stage pretrain --variant scout --run demo --config nano --in tokens=.herd/artifacts/tokenizer/<hash>
    torchrun --nproc_per_node 2 -m tasks.cli stage pretrain --variant scout ... --set pretrain.engine=deepspeed

The variant's model preset comes from ``models.<variant>``. Outputs: ``model.safetensors``
and ``model_config.json`` (our names), ``hf/`` (the same weights in Hugging Face format
with the tokenizer: ``transformers`` loads it), the last checkpoints under
``checkpoints/``, ``reports/tokens_by_language.csv`` and ``reports/expert_load.csv``.
Killed and restarted (an Airflow retry), it continues from the last complete checkpoint
and ends with the same weights, bit for bit, on the CPU.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path


from herd.model import model_preset
from herd.stages.pretrain import PretrainConfig
from tasks.model.artifacts import write_model
from tasks.model.inputs import tokenizer_dir
from tasks.model.info import model_info
from tasks.pretrain.data import TokenWindows
from tasks.pretrain.flops import peak_flops, training_flops_per_token
from tasks.pretrain.reports import log_training_reports, training_summary
from tasks.pretrain.train import Throughput, device_and_dtype, new_model, train, width_mult
from tasks.runtime import storage

log = logging.getLogger(__name__)


def run(ctx) -> dict:
    config: PretrainConfig = ctx.config
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
        batches = TokenWindows(tokenizer.tokens, config.seq_len, config.batch_size, config.seed)
        history = train(model, config, batches, ctx.workdir,
                        lambda step, metrics: ctx.tracker.log_metrics(metrics, step=step),
                        remote, throughput, width_mult(model_config, config), label=f"{ctx.variant}.pretrain")
        if not ctx.is_main:
            return {}
        write_model(model, ctx.workdir, tokenizer.folder, tokenizer.bos_id, tokenizer.eos_id)
    log_training_reports(ctx, history, "Pretraining loss")
    return {
        "variant": ctx.variant,
        "model": ctx.model_preset,
        "params_total": info["total_params"],
        "params_active": info["active_params"],
        "steps": config.steps,
        "tokens_seen": config.steps * config.batch_size * config.seq_len,
        "cpu_matmul_peak_gflops": round(throughput.peak_flops / 1e9, 2) if device.type == "cpu" else None,
        **training_summary(history),
    }
