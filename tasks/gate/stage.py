"""Stage ``gate``: judge a variant's final model, and register it in the MLflow Model Registry as ``candidate``.

    herd stage gate --variant scout --run r1 --in model=URI --in sft=URI --in rl=URI --in midtrain=URI
    herd registry promote --variant scout --run r1 --gate URI         # then: champion, or not

Every gated figure (``gate.thresholds``) is read from the summary of the input stage it
names (``step.json`` ``metrics``; ``model`` counts as its own stage, ``dpo`` or ``rl``) and
compared with its bar and with the current ``champion`` version's value of the same
figure. Outputs: ``reports/gate.csv`` and ``gate.json`` (each figure, its bar, the champion's
and the candidate's value, the verdict and why), logged to the stage's MLflow run.

Whatever the verdict, the model is registered: its ``hf/`` folder (weights and tokenizer)
becomes an artifact of this MLflow run and a new version of ``herd-<variant>`` is created
from it, tagged with its provenance (input URIs, and the MLflow runs that made them) and figures, and the
``candidate`` alias moves to it.
A failed gate is a result, not an error: the stage succeeds with ``verdict: fail``. Moving
``champion`` is :mod:`tasks.registry.promote`'s job, run after the gate in every DAG run,
because it must judge against the champion of *that* moment (this stage's output is
cached) and is where an override is given.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from herd.stages.gate import GateConfig
from tasks.registry import versions
from tasks.registry.health import unhealthy_figures
from tasks.registry.verdict import FAIL, NOT_APPLICABLE, REPORT_JSON, failed, figures_of, judge, verdict
from tasks.runtime import storage
from tasks.runtime.context import StageContext
from tasks.runtime.reports import write_csv
from tasks.runtime.step import STEP_FILE

log = logging.getLogger(__name__)

REPORT_CSV = "reports/gate.csv"


def read_steps(inputs: dict[str, str]) -> dict[str, dict]:
    """The inputs' step records, by input name."""
    return {key: json.loads(storage.read_text(storage.join(uri, STEP_FILE))) for key, uri in inputs.items()}


def run(ctx: StageContext[GateConfig]) -> dict:
    config = ctx.config
    variant = ctx.variant
    client = ctx.tracker.client
    name = config.registered_model(variant)
    steps = read_steps(ctx.inputs)
    final = steps["model"]
    # Figures are named by the stage that reported them: the model input is "dpo" or "rl".
    by_stage = {step["stage"]: step["metrics"] for step in steps.values()}
    candidate = figures_of(by_stage)
    withheld = unhealthy_figures(by_stage, config.max_judge_unparsed)
    champion = versions.by_alias(client, name, versions.CHAMPION)
    champion_figures = versions.figures(champion) if champion is not None else None
    rows = judge(config.for_variant(variant), config.champion_tolerance, candidate, champion_figures, set(by_stage),
                 withheld)
    outcome, failures = verdict(rows), failed(rows)
    for row in rows:
        log.info("gate %s: %-40s %-4s candidate %s champion %s: %s", variant, row.figure, row.verdict.upper(),
                 row.candidate, row.champion, row.reason)

    report = {
        "variant": variant,
        "verdict": outcome,
        "failed": failures,
        "registered_model": name,
        "champion": None if champion is None else {"version": str(champion.version), "figures": champion_figures},
        "rows": [row.as_dict() for row in rows],
        "figures": candidate,
        "withheld": withheld,
        "inputs": dict(ctx.inputs),
    }
    write_csv(ctx.workdir / REPORT_CSV, [row.as_dict() for row in rows])
    (ctx.workdir / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    ctx.tracker.log_artifact(ctx.workdir / REPORT_CSV, "reports")
    ctx.tracker.log_artifact(ctx.workdir / REPORT_JSON, "gate")

    gated = {row.figure: row.candidate for row in rows
             if row.verdict != NOT_APPLICABLE and row.candidate is not None and row.figure not in withheld}
    tags = {
        "herd.variant": variant,
        "herd.preset": ctx.pipeline.preset,
        "herd.model": ctx.model_preset,
        versions.GATE_HASH_TAG: ctx.output_uri.rstrip("/").rsplit("/", 1)[-1],
        "herd.model_hash": final["output_hash"],
        "herd.dag_run_id": ctx.run_id,
        "herd.git_commit": final.get("code_version", {}).get("git", "unknown"),
        "herd.gate.output": ctx.output_uri,
        "herd.gate.verdict": outcome,
        "herd.gate.failed": ",".join(failures) or "none",
        "herd.gate.champion": str(champion.version) if champion is not None else "none",
        **{f"herd.output.{key}": uri for key, uri in ctx.inputs.items()},
        # The MLflow runs that made each input: the version's run_id is the gate's own run.
        **{f"herd.mlflow_run.{key}": step["mlflow_run_id"] for key, step in steps.items() if step.get("mlflow_run_id")},
        **{f"herd.input.{key}": uri for key, uri in final.get("inputs", {}).items() if key != "model"},
        **{f"{versions.FIGURE_TAG}{figure}": value for figure, value in gated.items()},
    }
    with tempfile.TemporaryDirectory(prefix="herd-gate-") as tmp:
        hf_dir = storage.localize(storage.join(ctx.inputs["model"], "hf"), Path(tmp) / "hf")
        version = versions.register(client, name, ctx.tracker.run_id, hf_dir, tags,
                                    description=f"{variant} from pipeline run {ctx.run_id}; gate {outcome}")
    previous = versions.move_alias(client, name, versions.CANDIDATE, version.version)
    log.info("gate %s: %s; registered %s v%s, alias candidate (was %s)", variant, outcome.upper(), name,
             version.version, previous or "unset")
    ctx.tracker.log_metrics({"gate_passed": float(outcome != FAIL), "figures_failed": float(len(failures)),
                             **{f"figure/{figure}": value for figure, value in gated.items()}})
    return {
        "variant": variant,
        "verdict": outcome,
        "failed": failures,
        "figures_checked": sum(row.verdict != NOT_APPLICABLE for row in rows),
        "figures_failed": len(failures),
        "registered_model": name,
        "model_version": str(version.version),
        "champion_version": str(champion.version) if champion is not None else None,
    }
