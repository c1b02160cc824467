"""Stage ``codistill``: the teacher's top-k log-probabilities over the students' pretraining windows, once.

    herd stage codistill --run demo --config nano --in teacher=URI --in tokens=URI

Behemoth's forward pass over the data is the expensive half of co-distillation; Meta
amortised it over the students (LLAMA4_SPEC §2.3). This stage runs it once and writes the
cache (:mod:`tasks.codistill.cache`) that both students' ``pretrain`` read. The cache
covers the windows the students' pretraining reads (``codistill.cache_windows=run``:
their seq_len, batch size, steps and seed, which enter this stage's hash) or every
window (``all``). With ``scheme=none`` (the baseline) or ``teacher_source=online`` no
cache is needed: the stage records why and writes none.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from herd.stages.codistill import CodistillConfig
from tasks.codistill.cache import build_student_cache
from tasks.model.artifacts import load_model
from tasks.model.inputs import model_dir, tokenizer_dir
from tasks.runtime.context import StageContext
from tasks.training.distill.teachers import CACHE_DIR, needs_cache
from tasks.training.precision import device_and_dtype

log = logging.getLogger(__name__)

# Written instead of a cache when the students need none; the students' pretrain reads it.
NO_CACHE = "no_cache.json"


def run(ctx: StageContext[CodistillConfig]) -> dict:
    config = ctx.config
    if not needs_cache(config):
        reason = "scheme none: students train on the labels only" if config.scheme == "none" else \
            "teacher_source online: students run the teacher forward themselves"
        (ctx.workdir / NO_CACHE).write_text(json.dumps({"reason": reason}) + "\n")
        log.info("codistill: no cache (%s)", reason)
        return {"scheme": config.scheme, "teacher_source": config.teacher_source, "cached_windows": 0}
    with tempfile.TemporaryDirectory(prefix="herd-codistill-") as tmp:
        scratch = Path(tmp)
        tokenizer = tokenizer_dir(ctx.inputs["tokens"], scratch)
        device, _ = device_and_dtype(ctx.pipeline.pretrain)
        teacher = load_model(model_dir(ctx.inputs["teacher"], scratch, "teacher")).to(device).eval()
        teacher_hash = ctx.inputs["teacher"].rstrip("/").rsplit("/", 1)[-1]
        clock = time.monotonic()
        index = build_student_cache(teacher, tokenizer.tokens, ctx.workdir, config, ctx.pipeline.pretrain,
                                    teacher_hash)
        seconds = time.monotonic() - clock
    size = sum(p.stat().st_size for p in (ctx.workdir / CACHE_DIR).iterdir())
    summary = {
        "scheme": config.scheme,
        "teacher_source": config.teacher_source,
        "top_k": config.top_k,
        "cached_windows": index["windows"],
        "windows_in_tokens": index["windows_in_tokens"],
        "top_k_mass_mean": index["top_k_mass_mean"],
        "cache_megabytes": round(size / 2**20, 3),
        "teacher_windows_per_second": round(index["windows"] / max(seconds, 1e-9), 3),
    }
    ctx.tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    ctx.tracker.log_artifact(ctx.workdir / CACHE_DIR / "index.json")
    log.info("codistill: %d windows cached (top-%d, %.1f MB), the top-k holds %.1f%% of the teacher's mass",
             index["windows"], config.top_k, summary["cache_megabytes"], 100 * (index["top_k_mass_mean"] or 0))
    return summary
