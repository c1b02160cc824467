"""Stage ``rl``: online GRPO-style RL with a pass@k curriculum on the problems' checkers.

    herd stage rl --variant scout --run demo --in model=URI --in tokens=URI --in problems=URI

Starts from the variant's SFT model; the reference for the KL term is that model, frozen.
Metrics per round: reward, pass@1 and pass@k, pool size, dropped-easy and zero-advantage
counts, KL. ``pool.json`` (the prompts left, hardest first) is DPO's hard prompt set.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from herd.stages.rl import RLConfig
from tasks.model.artifacts import load_model, write_model
from tasks.model.inputs import model_dir, problems_dir, tokenizer_dir
from tasks.problems.checkers import code_confinement
from tasks.problems.item import read_jsonl
from tasks.rl.loop import run_rl
from tasks.rollout.groups import ChatRenderer
from tasks.runtime import storage
from tasks.runtime.context import StageContext


def run(ctx: StageContext[RLConfig]) -> dict:
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-rl-") as tmp:
        scratch = Path(tmp)
        problems = read_jsonl(problems_dir(ctx.inputs["problems"], scratch) / "train.jsonl")
        confined = code_confinement(problems)  # before anything heavy: refuses where code checks cannot be confined
        tokens = tokenizer_dir(ctx.inputs["tokens"], scratch)
        policy = load_model(model_dir(ctx.inputs["model"], scratch))
        summary = run_rl(policy, None, problems, ChatRenderer.load(tokens.folder), config,
                         lambda round_, metrics: ctx.tracker.log_metrics(metrics, step=round_), ctx.workdir,
                         remote=ctx.output_uri if storage.is_s3(ctx.output_uri) else None)
        write_model(policy, ctx.workdir, tokens.folder, tokens.bos_id, tokens.eos_id)
    return {"variant": ctx.variant, "model": ctx.model_preset, **summary, **confined}
