"""``herd safety cyberseceval``: one CyberSecEval benchmark against one model, as PurpleLlama's runner does it;
``herd safety goat``: GOAT multi-turn red teaming of one model (:mod:`tasks.safety.goat`).

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
:class:`herd.stages.safety.CyberSecEvalConfig` (the safety stage's ``safety.cyberseceval`` section).

Output (``--out``): responses.json, stat.json (PurpleLlama's stat file), tables/*.csv, summary.json.

    herd safety goat --target .herd/artifacts/dpo/scout/<hash> --judge guard --guards .herd/artifacts/guards/<hash> \\
        --turns 3 --out .herd/safety/goat --limit 14          # CPU: one nano model attacks itself, ~2 min
    herd safety goat --target openai:http://localhost:8000/v1#meta-llama/Llama-3.1-8B-Instruct \\
        --attacker openai:http://localhost:8001/v1#attacker-model --judge openai:http://localhost:8002/v1#judge \\
        --turns 5 --attempts 10 --out s3://bucket/results/goat

GOAT's defaults: the target attacks itself unless ``--attacker`` names another model; the judge is
the output guard of a ``guards`` stage output. The arguments make a :class:`herd.stages.safety.GoatConfig`
(the safety stage's ``safety.goat`` section). Output: conversations.jsonl, tables/asr_by_category.csv,
summary.json.
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
    safety = sub.add_parser("safety", help="safety evaluations (CyberSecEval, GOAT)")
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
    _add_goat_parser(safety_sub)


def _add_goat_parser(safety_sub) -> None:
    goat = safety_sub.add_parser("goat", help="GOAT multi-turn red teaming of one model",
                                 description="An attacker model red-teams the target over K turns with the 7 GOAT "
                                             "techniques; a judge decides each conversation; ASR@k per goal category.")
    goat.add_argument("--target", required=True, metavar="MODEL", help="the model under test")
    goat.add_argument("--attacker", default=None, metavar="MODEL", help="the attacker (default: the target itself)")
    goat.add_argument("--judge", default="guard", metavar="MODEL|guard|target",
                      help="guard: the output guard of --guards (default); target: the target judges; or a model")
    goat.add_argument("--guards", default=None, metavar="URI", help="a guards stage output (for --judge guard)")
    goat.add_argument("--turns", type=int, default=5, metavar="K", help="attacker turns per conversation (5)")
    goat.add_argument("--attempts", type=int, default=1, metavar="k", help="conversations per goal, for ASR@k (1)")
    goat.add_argument("--out", required=True, metavar="URI", help="folder for the results (path, file://, s3://)")
    goat.add_argument("--limit", type=int, default=0, metavar="N", help="N goals spread over the categories (0: all)")
    goat.add_argument("--goals", default="builtin", metavar="SOURCES",
                      help="builtin, interpreter, or both comma-separated (interpreter needs --interpreter-dataset)")
    goat.add_argument("--goals-per-category", type=int, default=3, metavar="N", help="built-in goals per category")
    goat.add_argument("--interpreter-dataset", default=None, metavar="URI",
                      help="CyberSecEval's interpreter.json, whose prompts become goals")
    goat.add_argument("--max-new-tokens", type=int, default=256, help="longest target reply")
    goat.add_argument("--attacker-max-new-tokens", type=int, default=512, help="longest attacker turn")
    goat.add_argument("--attacker-temperature", type=float, default=1.0)
    goat.add_argument("--seed", type=int, default=0)
    goat.add_argument("--keep-going", action="store_true", help="run all K turns even after an unsafe reply")
    goat.add_argument("--tokenizer", default=None, metavar="URI", help="herd models: a tokenizer stage's output")
    for role in ("target", "attacker", "judge"):
        goat.add_argument(f"--{role}-api-key-env", default=None, metavar="NAME",
                          help=f"environment variable holding the {role} endpoint's API key")


def _config(args: argparse.Namespace):
    from pydantic import ValidationError

    from herd.config import ConfigError, parse_override
    from herd.stages.safety import CyberSecEvalConfig

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


def run_goat_command(args: argparse.Namespace) -> int:
    from herd.stages.safety import CyberSecEvalConfig, GoatConfig
    from tasks.guards.loader import load_guards
    from tasks.redteam.datasets import DatasetError
    from tasks.runtime import storage
    from tasks.safety.chat import ModelSpecError, load_chat_model
    from tasks.safety.goat import GuardJudge
    from tasks.safety.goat.run import collect_goals, load_attacker, load_judge, run_goat

    sources = [s.strip() for s in args.goals.split(",") if s.strip()]
    problem = next((f"--goals: unknown source {s!r} (builtin, interpreter)" for s in sources
                    if s not in ("builtin", "interpreter")), None)
    if "interpreter" in sources and not args.interpreter_dataset:
        problem = "--goals interpreter needs --interpreter-dataset URI"
    if args.judge == "guard" and not args.guards:
        problem = "--judge guard needs --guards URI (a guards stage output: herd stage guards)"
    if min(args.turns, args.attempts) < 1:
        problem = "--turns and --attempts must be at least 1"
    if problem:
        print(f"herd: error: {problem}", file=sys.stderr)
        return 2
    config = CyberSecEvalConfig(max_new_tokens=args.max_new_tokens, seed=args.seed)
    try:
        # Built-in goals come first, whatever the order of --goals.
        goat = GoatConfig(turns=args.turns, attempts=args.attempts,
                          goals=[s for s in ("builtin", "interpreter") if s in sources],
                          goals_per_category=args.goals_per_category, limit=args.limit, attacker=args.attacker or "",
                          attacker_temperature=args.attacker_temperature,
                          attacker_max_new_tokens=args.attacker_max_new_tokens, judge=args.judge,
                          stop_on_success=not args.keep_going, seed=args.seed)
        with tempfile.TemporaryDirectory(prefix="herd-goat-") as tmp:
            scratch = Path(tmp)
            target = load_chat_model(args.target, scratch / "t", config, api_key_env=args.target_api_key_env,
                                     tokenizer_uri=args.tokenizer)
            attacker = load_attacker(goat, target, scratch, config, args.attacker_api_key_env, args.tokenizer)
            guard = None
            if args.judge == "guard":
                guard = GuardJudge(load_guards(args.guards, scratch)[0], name=f"guard:{args.guards}")
            judge = load_judge(goat, target, guard, scratch, config, args.judge_api_key_env, args.tokenizer)
            goals, _ = collect_goals(goat, args.interpreter_dataset)
            remote = storage.is_s3(args.out)
            out_dir = scratch / "out" if remote else storage.local_path(args.out)
            result = run_goat(goals, target, attacker, judge, out_dir, goat)
            if remote:
                storage.upload_tree(out_dir, args.out)
    except (ModelSpecError, DatasetError, FileNotFoundError, ValueError) as err:
        print(f"herd: error: {err}", file=sys.stderr)
        return 2
    except storage.StorageError as err:
        print(f"herd: error: {err}", file=sys.stderr)
        return 1
    summary = result.summary
    print(f"goat: {summary['goals']} goals x {args.attempts} attempts, {args.turns} turns; target {summary['target']}, "
          f"attacker {summary['attacker']}, judge {summary['judge']}")
    print(f"  attacker turns {summary['attacker_turns']}, replaced by a technique template "
          f"{summary['attacker_fallbacks']} (unparsable or failed)")
    key = f"asr_at_{args.attempts}"
    for category, table in result.by_category.items():
        print(f"  {category:<24} ASR@{args.attempts} = {table[key]:.3f} ({table['goals']} goals)")
    print(json.dumps({"out": args.out, **summary["metrics"]}))
    return 0


def run_safety(args: argparse.Namespace) -> int:
    if args.safety_command == "goat":
        return run_goat_command(args)
    from herd.config import ConfigError
    from tasks.redteam.datasets import DatasetError
    from tasks.runtime import storage
    from tasks.safety.benchmarks import BENCHMARKS
    from tasks.safety.chat import ModelSpecError
    from tasks.safety.cyberseceval import EvaluationError, load_models, run_cyberseceval
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
