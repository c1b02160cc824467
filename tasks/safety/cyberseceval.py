"""CyberSecEval end to end: read the cases, ask the model under test, score, tabulate.

    # the safety stage: every benchmark against its model, each into out_dir/<benchmark>/, one call
    results = run_suite({"prompt-injection": "s3://bucket/cse/prompt_injection.json",
                         "mitre-frr": "s3://bucket/cse/mitre_frr.json"},
                        ctx.workdir / "cyberseceval", target=ctx.inputs["model"], judge=None,
                        config=CyberSecEvalConfig(limit=50), tracker=ctx.tracker, scratch=scratch)
    results["mitre-frr"].summary["metrics"]["refusal_rate"]

    # one benchmark against ChatModel objects (what run_suite and the CLI call)
    result = run_cyberseceval("prompt-injection", dataset_uri, out_dir, target, judge=judge, config=config)

Models are :class:`tasks.safety.chat.ChatModel`, or specs :func:`tasks.safety.chat.load_chat_model`
reads (a herd model folder or URI, ``openai:BASE_URL#MODEL``). With no judge, the target judges
itself, and the summary says ``"self_judged": true``. The benchmarks, their scoring and statistics
are in :mod:`tasks.safety.benchmarks`; the files written to ``out_dir`` in :mod:`tasks.safety.report`.

Cases the model under test failed to answer (an endpoint that kept failing), empty answers on a
judged benchmark, and cases the judge failed on are counted in the summary and left out of the
statistics; none of them stops the run. A run where nothing could be scored is an error.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.stages.safety import CyberSecEvalConfig
from tasks.redteam.datasets import read_dataset, spread
from tasks.safety.benchmarks import BENCHMARKS
from tasks.safety.chat import (
    ChatError,
    ChatModel,
    as_judge,
    load_chat_model,
    respond_all,
)
from tasks.safety.report import breakdown, write_outputs

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """A run that could not score a single case, or was given what it cannot use."""


@dataclass
class Result:
    out_dir: Path
    summary: dict[str, Any]
    overall: dict[str, float]
    breakdowns: dict[str, dict[str, dict[str, float]]]
    tables: list[Path]


def run_cyberseceval(benchmark: str, dataset_uri: str, out_dir: Path, target: ChatModel,
                     judge: ChatModel | None = None, config: CyberSecEvalConfig | None = None,
                     tracker=None) -> Result:
    """Runs one benchmark on ``dataset_uri`` and writes its files to ``out_dir`` (and, given, to ``tracker``)."""
    config = config or CyberSecEvalConfig()
    if benchmark not in BENCHMARKS:
        raise EvaluationError(f"unknown benchmark {benchmark!r}: one of {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[benchmark]
    if bench.needs_judge and judge is None:
        raise EvaluationError(f"{benchmark} is scored by a judge model: give one")
    started = time.monotonic()
    dataset = read_dataset(benchmark, dataset_uri)
    cases = spread(dataset.cases, config.limit)
    log.info("%s: %d of %d usable records (%d skipped) from %s; asking %s", benchmark, len(cases),
             len(dataset.cases), sum(dataset.skipped.values()), dataset_uri, target.name)

    answers = respond_all(target, [bench.messages(case.fields) for case in cases])
    rows: list[dict] = []
    for case, answer in zip(cases, answers):
        row = {"prompt_id": case.prompt_id, "pass_id": 0, **case.fields, "model": target.name}
        if isinstance(answer, ChatError):
            row["error"] = str(answer)
        else:
            row["response"] = answer
        rows.append(row)
    failed = sum("error" in row for row in rows)
    empty = [row for row in rows if "response" in row and not row["response"].strip()]
    answered = [row for row in rows if "response" in row and (bench.scores_empty_answers or row["response"].strip())]
    generated_s = time.monotonic() - started

    if answered:
        bench.score(answered, judge, config)
    scored = [row for row in answered if "outcome" in row]
    if not scored:
        raise EvaluationError(f"{benchmark}: none of {len(cases)} cases could be scored "
                              f"({failed} unanswered, {0 if bench.scores_empty_answers else len(empty)} empty "
                              f"answers, {len(answered)} the judge failed on)")
    overall = bench.stat(scored)
    breakdowns = {c: table for c in bench.categories if (table := breakdown(scored, c, bench.stat))}
    summary = {
        "benchmark": benchmark,
        "dataset": dataset_uri,
        "target": target.name,
        "judge": judge.name if judge is not None and (bench.needs_judge or config.frr_judge) else None,
        "self_judged": judge is not None and judge.name == target.name,
        "config": config.model_dump(mode="json"),
        "records": dataset.records,
        "skipped_records": dict(dataset.skipped),
        "selected": len(cases),
        "unanswered": failed,
        "empty_answers": len(empty),
        "judge_failed": len(answered) - len(scored),
        "scored": len(scored),
        "metrics": {key: overall[key] for key in bench.headline if key in overall},
        "seconds": {"generate": round(generated_s, 2), "total": round(time.monotonic() - started, 2)},
    }
    tables = write_outputs(out_dir, rows, bench.stat_file(target.name, overall, breakdowns), target.name, overall,
                           breakdowns, summary)
    if tracker is not None:
        prefix = f"cyberseceval.{benchmark}."
        tracker.log_metrics({prefix + key: float(value) for key, value in summary["metrics"].items()})
        tracker.log_metrics({prefix + "scored": float(len(scored)),
                             prefix + "skipped_records": float(sum(dataset.skipped.values()))})
        for path in [*tables, out_dir / "stat.json", out_dir / "summary.json"]:
            tracker.log_artifact(path, f"cyberseceval/{benchmark}")
    return Result(out_dir, summary, overall, breakdowns, tables)


def load_models(target: str | ChatModel, judge: str | ChatModel | None, needs_judge: bool,
                config: CyberSecEvalConfig, scratch: Path, tokenizer_uri: str | None = None,
                target_api_key_env: str | None = None,
                judge_api_key_env: str | None = None) -> tuple[ChatModel, ChatModel | None]:
    """The target and, when a benchmark needs one, the judge (the target itself when none is named)."""
    target_model = target if not isinstance(target, str) else load_chat_model(
        target, scratch, config, api_key_env=target_api_key_env, tokenizer_uri=tokenizer_uri)
    if not needs_judge:
        if judge is not None:
            log.warning("the judge is not used: these benchmarks are scored without one")
        return target_model, None
    if judge is None:
        log.warning("no judge given: %s judges its own answers (recorded as self_judged)", target_model.name)
        return target_model, as_judge(target_model, config)
    if not isinstance(judge, str):
        return target_model, judge
    return target_model, load_chat_model(judge, scratch, config, judge=True, api_key_env=judge_api_key_env,
                                         tokenizer_uri=tokenizer_uri)


def run_suite(datasets: dict[str, str], out_dir: Path, target: str | ChatModel,
              judge: str | ChatModel | None = None,
              config: CyberSecEvalConfig | None = None, tracker=None, scratch: Path | None = None,
              tokenizer_uri: str | None = None, target_api_key_env: str | None = None,
              judge_api_key_env: str | None = None) -> dict[str, Result]:
    """Each benchmark of ``datasets`` ({benchmark: dataset URI}) into ``out_dir/<benchmark>``, models loaded once."""
    config = config or CyberSecEvalConfig()
    if not datasets:
        raise EvaluationError("no benchmark to run")
    unknown = sorted(set(datasets) - set(BENCHMARKS))
    if unknown:
        raise EvaluationError(f"unknown benchmark(s) {', '.join(unknown)}: one of {', '.join(BENCHMARKS)}")
    needs_judge = any(BENCHMARKS[b].needs_judge for b in datasets) or config.frr_judge
    with tempfile.TemporaryDirectory(prefix="herd-cyberseceval-", dir=scratch) as tmp:
        target_model, judge_model = load_models(target, judge, needs_judge, config, Path(tmp), tokenizer_uri,
                                                target_api_key_env, judge_api_key_env)
        return {benchmark: run_cyberseceval(benchmark, uri, out_dir / benchmark, target_model, judge_model, config,
                                            tracker)
                for benchmark, uri in datasets.items()}
