"""Stage ``problems``: prompt/answer sets with checkers for SFT, RL and DPO, from the aligned UDHR and generators.

    herd stage problems --run demo --config nano --in udhr=.herd/corpus/udhr

Outputs ``train.jsonl``, ``eval.jsonl`` (one :class:`tasks.problems.item.Problem` per line,
held out by content hash and, for UDHR items, by article number) and ``index.json``
(counts per split, capability and difficulty); ``reports/problems.csv`` in MLflow.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from herd.stages.problems import ProblemsConfig
from tasks.problems.build import INDEX, build_problem_sets
from tasks.runtime import storage
from tasks.runtime.context import StageContext
from tasks.runtime.reports import log_csv


def run(ctx: StageContext[ProblemsConfig]) -> dict:
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-problems-") as tmp:
        corpus = storage.localize(ctx.inputs["udhr"], Path(tmp), lambda relative: relative.endswith(".jsonl"))
        summary = build_problem_sets(corpus, ctx.workdir, config)
    index = json.loads((ctx.workdir / INDEX).read_text())
    log_csv(ctx, "problems.csv", [
        {"split": split, "capability": capability, "difficulty": difficulty, "count": count}
        for split, counts in index["splits"].items()
        for capability, by in sorted(counts["capability"].items())
        for difficulty, count in sorted(by["difficulty"].items(), key=lambda kv: int(kv[0]))
    ])
    return summary
