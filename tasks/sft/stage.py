"""Stage ``sft``: judge-pruned supervised fine-tuning on the problems, loss on assistant tokens only.

    herd stage sft --variant scout --run demo --in model=URI --in judge=URI --in tokens=URI --in problems=URI

The judge is the teacher (Behemoth's pretrained model); the students drop
``sft.drop_easy_fraction`` of the easiest examples, Behemoth ``sft.teacher_drop_easy_fraction``.
Reports: kept/dropped per difficulty bucket and capability (CSV, plot, examples), the
held-out hard set before SFT, after pruned SFT and after unpruned SFT at equal compute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from herd.stages.sft import SFTConfig
from tasks.model.artifacts import load_model, write_model
from tasks.model.inputs import model_dir, problems_dir, tokenizer_dir
from tasks.problems.checkers import code_confinement
from tasks.problems.item import read_jsonl
from tasks.runtime import storage
from tasks.runtime.context import StageContext
from tasks.sft.run import run_sft
from tasks.training.optim import width_mult
from tasks.training.reports import log_training_reports


def run(ctx: StageContext[SFTConfig]) -> dict:
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-sft-") as tmp:
        scratch = Path(tmp)
        problems = problems_dir(ctx.inputs["problems"], scratch)
        confined = code_confinement(read_jsonl(problems / "train.jsonl") + read_jsonl(problems / "eval.jsonl"))
        tokens = tokenizer_dir(ctx.inputs["tokens"], scratch)
        student = load_model(model_dir(ctx.inputs["model"], scratch))
        judge = load_model(model_dir(ctx.inputs["judge"], scratch, "judge")).eval()
        summary, history = run_sft(
            student, judge, problems, tokens.folder, config,
            config.drop_fraction(ctx.variant), ctx.workdir,
            on_metrics=lambda step, metrics: ctx.tracker.log_metrics(metrics, step=step),
            log_plot=ctx.tracker.log_plot, log_artifact=ctx.tracker.log_artifact,
            mult=width_mult(student.config, ctx.pipeline.pretrain),
            remote=ctx.output_uri if storage.is_s3(ctx.output_uri) else None)
        write_model(student, ctx.workdir, tokens.folder, tokens.bos_id, tokens.eos_id)
    log_training_reports(ctx, history, f"SFT loss, assistant tokens ({ctx.variant})")
    return {"variant": ctx.variant, "model": ctx.model_preset, **summary, **confined}
