"""``herd safety cyberseceval``: one CyberSecEval benchmark against one model, as PurpleLlama's runner does it.

    herd safety cyberseceval --benchmark prompt-injection \\
        --dataset ../shared/data/cyberseceval/prompt_injection.json \\
        --out .herd/safety/pi --target .herd/artifacts/dpo/<hash> --limit 20
    herd safety cyberseceval --benchmark interpreter --dataset s3://bucket/cse/interpreter.json \\
        --out s3://bucket/results/interpreter \\
        --target openai:http://localhost:8000/v1#meta-llama/Llama-3.1-8B-Instruct --target-api-key-env VLLM_KEY \\
        --judge openai:http://localhost:8001/v1#meta-llama/Llama-3.3-70B-Instruct
    herd safety cyberseceval --benchmark mitre-frr ... --set max_new_tokens=128 --set frr_judge=true

MODEL is a herd model folder (a model stage's output: path, file:// or s3:// URI) or
``openai:BASE_URL#MODEL_NAME`` for an OpenAI-compatible server (see :mod:`tasks.safety.chat`).
An endpoint's API key is read from the environment variable named by ``--target-api-key-env`` /
``--judge-api-key-env``; the key is never an argument.

Defaults, all offline: ``--target`` has none (a score must say whose it is; inside the pipeline the
``safety`` stage's target is its upstream model). ``--judge``, for the benchmarks a judge scores
(prompt-injection, interpreter, and mitre-frr with ``frr_judge``), defaults to the target judging
itself; the summary records ``"self_judged": true`` and the log says so, since a model grading its
own answers is a weak judge. ``--set`` takes the fields of
:class:`tasks.safety.config.CyberSecEvalConfig`.

Output (``--out``): responses.json, stat.json (PurpleLlama's stat file), tables/*.csv, summary.json.
Exit status: 0 done, 1 the run failed, 2 bad arguments, model spec or dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

BENCHMARK_NAMES = ("prompt-injection", "mitre-frr", "interpreter", "instruct", "autocomplete")


def add_safety_parser(sub) -> None:
    """The ``safety`` subcommand of ``herd`` (``sub`` is the top-level subparsers object)."""
    safety = sub.add_parser("safety", help="safety evaluations (CyberSecEval)")
    safety_sub = safety.add_subparsers(dest="safety_command", required=True)
    cse = safety_sub.add_parser("cyberseceval", help="one CyberSecEval benchmark against one model",
                                description="Models: a herd model folder or URI, or openai:BASE_URL#MODEL.")
    cse.add_argument("--benchmark", required=True, choices=BENCHMARK_NAMES)
    cse.add_argument("--dataset", required=True, metavar="URI", help="PurpleLlama's JSON file (path, file://, s3://)")
    cse.add_argument("--out", required=True, metavar="URI", help="folder for the results (path, file://, s3://)")
    cse.add_argument("--target", required=True, metavar="MODEL", help="the model under test")
    cse.add_argument("--judge", default=None, metavar="MODEL", help="the judge (default: the target itself)")
    cse.add_argument("--limit", type=int, default=None, metavar="N",
                     help="N test cases spread over the file (default: all)")
    cse.add_argument("--target-api-key-env", default=None, metavar="NAME",
                     help="environment variable holding the target endpoint's API key")
    cse.add_argument("--judge-api-key-env", default=None, metavar="NAME",
                     help="environment variable holding the judge endpoint's API key")
    cse.add_argument("--tokenizer", default=None, metavar="URI",
                     help="herd models: a tokenizer stage's output (default: the tokenizer in the model's hf/)")
    cse.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="a CyberSecEvalConfig field, e.g. max_new_tokens=128 (repeatable)")


def _config(args: argparse.Namespace):
    from pydantic import ValidationError

    from herd.config import ConfigError, parse_override
    from tasks.safety.config import CyberSecEvalConfig

    fields = dict(parse_override(text) for text in args.sets)
    if args.limit is not None:
        fields["limit"] = args.limit
    try:
        return CyberSecEvalConfig(**fields)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"--set: {problems}") from None


def _format(result) -> str:
    summary = result.summary
    judge = f", judge {summary['judge']}" if summary["judge"] else ""
    if judge and summary["self_judged"]:
        judge += " (self-judged)"
    lines = [
        (f"{summary['benchmark']}: {summary['scored']} scored of {summary['selected']} selected "
         f"({summary['records']} records, skipped {summary['skipped_records'] or 'none'})"),
        f"  target {summary['target']}{judge}",
    ]
    lines += [f"  {key} = {value:.4g}" for key, value in summary["metrics"].items()]
    for category, table in result.breakdowns.items():
        lines.append(f"  by {category}:")
        headline = next(iter(summary["metrics"]), None)
        for value, stat in table.items():
            figure = f"{headline} = {stat[headline]:.4g}, " if headline in stat else ""
            count = stat.get("total_count", stat.get("accept_count", 0) + stat.get("refusal_count", 0))
            lines.append(f"    {value:<40} {figure}n = {count}")
    return "\n".join(lines)


def run_safety(args: argparse.Namespace) -> int:
    from herd.config import ConfigError
    from tasks.runtime import storage
    from tasks.safety.benchmarks import BENCHMARKS
    from tasks.safety.chat import ModelSpecError
    from tasks.safety.cyberseceval import EvaluationError, load_models, run_cyberseceval
    from tasks.safety.datasets import DatasetError
    from tasks.safety.insecure_code import DetectorUnavailable

    try:
        config = _config(args)
        with tempfile.TemporaryDirectory(prefix="herd-safety-") as tmp:
            scratch = Path(tmp)
            needs_judge = BENCHMARKS[args.benchmark].needs_judge or config.frr_judge
            target, judge = load_models(args.target, args.judge, needs_judge, config, scratch, args.tokenizer,
                                        args.target_api_key_env, args.judge_api_key_env)
            remote = storage.is_s3(args.out)
            out_dir = scratch / "out" if remote else storage.local_path(args.out)
            result = run_cyberseceval(args.benchmark, args.dataset, out_dir, target, judge, config)
            if remote:
                storage.upload_tree(out_dir, args.out)
    except (ConfigError, ModelSpecError, DatasetError) as err:
        print(f"herd: error: {err}", file=sys.stderr)
        return 2
    except (EvaluationError, DetectorUnavailable, storage.StorageError) as err:
        print(f"herd: error: {err}", file=sys.stderr)
        return 1
    print(_format(result))
    print(json.dumps({"out": args.out, **result.summary["metrics"]}))
    return 0
