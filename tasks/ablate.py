"""``herd ablate``: the post-training ablations of a pipeline run, over seeds, as one table in MLflow.

    herd ablate --config nano --seeds 0 1 2                     # all three, on the nano pipeline's outputs
    herd ablate --only sft rl --set sft.steps=20 --seeds 0 1 2

It finds the complete outputs of the pipeline for the given config (the same hashes
``herd plan`` prints) and runs, for the Scout student:

- ``codistill``: students pretrained with co-distillation from Behemoth (the pipeline's
  scheme) against plain next-token loss, equal steps, held-out loss;
- ``sft``: SFT on the judge-pruned set against the unpruned set, equal compute, loss and
  pass@1 on the held-out hard set;
- ``rl``: the pass@k curriculum against uniform prompt sampling, equal rollouts, reward
  and pass@k on held-out problems.

Each writes its table (``ablate_<name>.csv``) to an MLflow run ``ablate`` (kind
``ablation``) with the summary as metrics, and prints it.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

from herd.pipeline import PipelineConfig
from tasks.runtime.reports import write_csv

log = logging.getLogger(__name__)
ABLATIONS = ("codistill", "sft", "rl")
STUDENT = "scout"


def outputs(config: PipelineConfig, artifact_root: str) -> dict[str, str]:
    """Stage id -> output URI of every complete stage output of this config."""
    from tasks.runtime.step import plan

    return {p.spec.id: p.uri for p in plan(config, artifact_root, {}) if p.complete}


def _needed(found: dict[str, str], *stage_ids: str) -> list[str]:
    missing = [s for s in stage_ids if s not in found]
    if missing:
        from tasks.runtime.step import InputError

        raise InputError(f"ablate needs the complete outputs of {', '.join(missing)}; run the pipeline first "
                         f"(make demo, or herd stage ...) with the same config")
    return [found[s] for s in stage_ids]


def codistill_rows(config: PipelineConfig, found: dict[str, str], seeds: list[int], scratch: Path) -> list[dict]:
    from herd.model import model_preset
    from herd.stages.codistill import CodistillConfig
    from tasks.codistill.compare import compare
    from tasks.model.artifacts import load_model
    from tasks.model.inputs import model_dir, tokenizer_dir

    tokens_uri, teacher_uri = _needed(found, "tokenizer", "behemoth.pretrain")
    tokens = tokenizer_dir(tokens_uri, scratch)
    teacher = load_model(model_dir(teacher_uri, scratch, "teacher")).eval()
    student = model_preset(config.models.scout).model_copy(update={"vocab_size": teacher.config.vocab_size})
    # The pipeline's own scheme against the baseline; a pipeline run without co-distillation
    # is compared with the default scheme.
    codistill = config.codistill if config.codistill.scheme != "none" else CodistillConfig()
    comparison = compare(tokens.folder / "tokens", teacher, student, config.pretrain, codistill,
                         ("none", codistill.scheme), seeds, scratch / "codistill")
    return comparison.rows()


def sft_rows(config: PipelineConfig, found: dict[str, str], seeds: list[int], scratch: Path) -> list[dict]:
    from tasks.model.artifacts import load_model
    from tasks.model.inputs import model_dir, problems_dir, tokenizer_dir
    from tasks.sft.evaluate import compare_pruned_vs_unpruned
    from tasks.sft.run import judged_data

    tokens_uri, problems_uri, judge_uri, student_uri = _needed(
        found, "tokenizer", "problems", "behemoth.pretrain", f"{STUDENT}.midtrain")
    tokens = tokenizer_dir(tokens_uri, scratch)
    student = load_model(model_dir(student_uri, scratch))
    judge = load_model(model_dir(judge_uri, scratch, "judge")).eval()
    data = judged_data(student, judge, problems_dir(problems_uri, scratch), tokens.folder, config.sft, scratch / "sft")
    return compare_pruned_vs_unpruned(student, data.tokenizer, data.train, data.scores, data.hard, config.sft,
                                      config.sft.drop_fraction(STUDENT), scratch / "sft", seeds=seeds)


def rl_rows(config: PipelineConfig, found: dict[str, str], seeds: list[int], scratch: Path) -> list[dict]:
    from tasks.model.inputs import model_dir, problems_dir, tokenizer_dir
    from tasks.rl.ablation import curriculum_vs_uniform

    tokens_uri, problems_uri, sft_uri = _needed(found, "tokenizer", "problems", f"{STUDENT}.sft")
    tokens = tokenizer_dir(tokens_uri, scratch)
    result = curriculum_vs_uniform(model_dir(sft_uri, scratch), tokens.folder, problems_dir(problems_uri, scratch),
                                   config.rl, scratch / "rl", seeds=seeds)
    return [{"arm": run["arm"], "seed": run["seed"], **{k: v for k, v in run.items()
                                                        if isinstance(v, (int, float)) and k != "seed"}}
            for run in result["runs"]]


RUNNERS: dict[str, Callable[[PipelineConfig, dict[str, str], list[int], Path], list[dict]]] = {
    "codistill": codistill_rows, "sft": sft_rows, "rl": rl_rows,
}


def summary_metrics(name: str, rows: list[dict]) -> dict[str, float]:
    """Mean of every numeric column per arm (or scheme): what the MLflow run shows at a glance."""
    by_arm: dict[str, list[dict]] = {}
    for row in rows:
        by_arm.setdefault(str(row.get("arm", row.get("scheme"))), []).append(row)
    metrics = {}
    for arm, arm_rows in by_arm.items():
        for key in arm_rows[0]:
            values = [r[key] for r in arm_rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
            if values and key not in {"seed"}:
                metrics[f"{name}/{arm}/{key}"] = statistics.fmean(values)
    return metrics


def ablate(config: PipelineConfig, artifact_root: str, only: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    from tasks.runtime import tracking

    found = outputs(config, artifact_root)
    client = tracking.client()
    run = client.create_run(tracking.experiment_id(client), run_name="ablate",
                            tags={tracking.KIND_TAG: "ablation", "herd.preset": config.preset})
    tracker = tracking.StageRun(client, run.info.run_id)
    tracker.log_params({"ablations": ",".join(only), "seeds": ",".join(map(str, seeds)),
                        **{f"input.{k}": v for k, v in sorted(found.items())}})
    tables: dict[str, list[dict]] = {}
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory(prefix="herd-ablate-") as tmp:
            for name in only:
                log.info("ablate: %s over seeds %s", name, seeds)
                rows = RUNNERS[name](config, found, seeds, Path(tmp) / name)
                tables[name] = rows
                path = write_csv(Path(tmp) / f"ablate_{name}.csv", rows)
                tracker.log_artifact(path, "reports")
                tracker.log_metrics(summary_metrics(name, rows))
        status = "FINISHED"
    finally:
        tracker.end(status)
    return tables


def format_tables(tables: dict[str, list[dict]]) -> str:
    lines = []
    for name, rows in tables.items():
        lines.append(f"== {name}")
        columns: list[str] = list(dict.fromkeys(key for row in rows for key in row))
        lines.append("  ".join(columns))
        for row in rows:
            lines.append("  ".join(_cell(row.get(c)) for c in columns))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")

