"""Evaluate a registered model version on demand: the problems' held-out set, per capability, to MLflow.

    herd registry evaluate --run eval-1 --model herd-scout --version champion
    herd registry evaluate --run eval-2 --model herd-maverick --version 3 --problems .herd/artifacts/problems/<hash>

The model is what the registry holds: the version's ``hf/`` folder (weights, config and
tokenizer), downloaded and loaded into herd's Llama 4 (:func:`tasks.model.hf.load`). The
problems default to the problems output the version was post-trained with (its
``herd.input.problems`` tag). The evaluation is SFT's held-out one (:func:`tasks.sft.evaluate.evaluate`:
assistant-token loss, greedy pass@1 by the problems' checkers, mean reward) on the first
``sft.eval_max_items`` items, with ``sft``'s sampling settings. Results go to a nested MLflow
run of the DAG run (``reports/evaluation.csv``, one row per capability and one for all)
and onto the version as ``herd.eval.*`` tags.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from pathlib import Path

from herd.pipeline import PipelineConfig
from tasks.registry import versions
from tasks.runtime import tracking
from tasks.runtime.reports import write_csv

log = logging.getLogger(__name__)

PROBLEMS_TAG = "herd.input.problems"


def evaluate_version(client, name: str, version_or_alias: str, run_id: str, config: PipelineConfig,
                     problems: str = "") -> dict:
    from tasks.model import hf
    from tasks.model.inputs import problems_dir
    from tasks.problems.chat import load_tokenizer
    from tasks.problems.item import read_jsonl
    from tasks.sft.data import render_examples
    from tasks.sft.evaluate import evaluate

    version = versions.resolve(client, name, version_or_alias)
    problems = problems or (version.tags or {}).get(PROBLEMS_TAG, "")
    if not problems:
        raise versions.RegistryError(f"{name} v{version.version} records no problems set ({PROBLEMS_TAG}): "
                                     "give one with --problems URI")
    sft = config.sft
    tags = {"herd.registered_model": name, "herd.model_version": version.version}
    params = {"registered_model": name, "version": version.version, "asked_for": version_or_alias,
              "problems": problems, "source": version.source, "max_items": sft.eval_max_items,
              "max_new_tokens": sft.max_new_tokens, "pass_reward": sft.pass_reward, "seed": sft.seed}
    run = tracking.StageRun.start(run_id, f"evaluate {name} v{version.version}", tags, params)
    try:
        with tempfile.TemporaryDirectory(prefix="herd-evaluate-") as tmp:
            scratch = Path(tmp)
            folder = versions.download(client, version, scratch / "model")
            model = hf.load(folder).eval()
            tokenizer = load_tokenizer(folder)
            items = read_jsonl(problems_dir(problems, scratch) / "eval.jsonl")[: sft.eval_max_items]
            examples, too_long = render_examples(tokenizer, items, sft.seed, sft.seq_len + 1)
            by_capability = defaultdict(list)
            for example in examples:
                by_capability[example.capability].append(example)
            rows = [{"capability": capability, **evaluate(model, tokenizer, group, sft)}
                    for capability, group in sorted(by_capability.items())]
            overall = _overall(rows)
            run.log_artifact(write_csv(scratch / "evaluation.csv", [*rows, {"capability": "all", **overall}]),
                             "reports")
        metrics = {f"eval/{k}": v for k, v in overall.items() if v is not None}
        metrics |= {f"eval/{r['capability']}/{k}": r[k] for r in rows for k in ("pass1", "loss", "reward")
                    if r[k] is not None}
        metrics["eval/too_long"] = float(too_long)
        run.log_metrics(metrics)
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
    versions.set_tags(client, name, version.version, {
        **{f"herd.eval.{k}": v for k, v in overall.items() if v is not None},
        "herd.eval.problems": problems, "herd.eval.mlflow_run": run.run_id, "herd.eval.at": versions.now()})
    log.info("evaluate %s v%s on %d items: %s", name, version.version, overall["items"], overall)
    return {"registered_model": name, "version": version.version, "mlflow_run": run.run_id, **overall,
            "by_capability": rows}


def _overall(rows: list[dict]) -> dict:
    """Item-weighted means over the capabilities."""
    items = sum(r["items"] for r in rows)
    overall: dict = {"items": items}
    for key in ("loss", "pass1", "reward"):
        scored = [(r[key], r["items"]) for r in rows if r[key] is not None]
        overall[key] = round(sum(v * n for v, n in scored) / sum(n for _, n in scored), 6) if scored else None
    return overall
