"""Stage ``dpo``: lightweight DPO on on-policy pairs from the RL policy's hard prompts.

    herd stage dpo --variant scout --run demo --in model=URI --in tokens=URI --in problems=URI

The model input is the variant's ``rl`` output; its ``pool.json`` (the prompts RL left,
hardest first) is the prompt set. Pairs are scored by the problems' checkers; the
reference is the RL policy, frozen. Metrics: preference accuracy, reward margin, loss.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from herd.stages.dpo import DPOConfig
from tasks.dpo.train import run_dpo
from tasks.model.artifacts import load_model, model_files, write_model
from tasks.model.inputs import problems_dir, tokenizer_dir
from tasks.problems.checkers import code_confinement
from tasks.problems.item import read_jsonl
from tasks.rl.hard_prompts import POOL, hard_prompt_ids
from tasks.rollout.groups import ChatRenderer
from tasks.runtime import storage
from tasks.runtime.context import StageContext


def run(ctx: StageContext[DPOConfig]) -> dict:
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-dpo-") as tmp:
        scratch = Path(tmp)
        tokens = tokenizer_dir(ctx.inputs["tokens"], scratch)
        rl_dir = storage.localize(ctx.inputs["model"], scratch / "model",
                                  lambda relative: model_files(relative) or relative == POOL)
        policy = load_model(rl_dir)
        by_id = {p.id: p for p in read_jsonl(problems_dir(ctx.inputs["problems"], scratch) / "train.jsonl")}
        hard = [by_id[i] for i in hard_prompt_ids(rl_dir) if i in by_id]
        confined = code_confinement(hard)
        summary = run_dpo(policy, None, hard, ChatRenderer.load(tokens.folder), config,
                          lambda step, metrics: ctx.tracker.log_metrics(metrics, step=step), ctx.workdir,
                          remote=ctx.output_uri if storage.is_s3(ctx.output_uri) else None)
        write_model(policy, ctx.workdir, tokens.folder, tokens.bos_id, tokens.eos_id)
    return {"variant": ctx.variant, "model": ctx.model_preset, "hard_prompts": len(hard), **summary, **confined}
