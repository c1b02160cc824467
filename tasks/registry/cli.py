"""``herd registry``: promote a gated candidate, find a variant's champion, evaluate a registered version.

    herd registry promote --run r1 --gate .herd/artifacts/gate/scout/<hash>
    herd registry promote --run r1 --gate URI --override --override-reason "accepted: ticket 42" [--override-by NAME]
    herd registry champion scout                   # the champion's model output URI (empty if none)
    herd registry champion behemoth scout maverick # the first of them that has a champion
    herd registry evaluate --run e1 --model herd-scout --version champion [--problems URI] [--config nano]

Each prints ``HERD_OUTPUT=...`` last, as stages do, for Airflow's XCom: the champion's
``models:/`` URI after a promotion, a model output URI, the evaluated version's URI.
Exit status: 0 done (a failed gate left unpromoted included), 1 failed, 2 bad arguments, or a
registered model, version or alias that is not there.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path

from herd.stage import OUTPUT_LINE_PREFIX


def _bool(text: str) -> bool:
    if text.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if text.strip().lower() in {"0", "false", "no", "off", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_registry_parser(sub, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    registry = sub.add_parser("registry", help="the MLflow Model Registry: promote, champion, evaluate")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)

    promote = registry_sub.add_parser("promote", help="move champion to a gate's candidate if it passed "
                                                      "(or by override)")
    promote.add_argument("--run", required=True, help="the pipeline run id (the DAG run id under Airflow)")
    promote.add_argument("--gate", required=True, metavar="URI", help="the gate stage's output")
    promote.add_argument("--override", type=_bool, nargs="?", const=True, default=False,
                         help="promote even if the gate failed (needs --override-reason)")
    promote.add_argument("--override-reason", default="", help="why the failed gate is overridden (audit tag)")
    promote.add_argument("--override-by", default=None, help="who decides (audit tag; default: this user)")

    champion = registry_sub.add_parser("champion", help="print the model output of a variant's champion")
    champion.add_argument("variants", nargs="+", help="the first of these variants that has a champion")
    add_config_args(champion)

    evaluate = registry_sub.add_parser("evaluate", help="evaluate a registered version on the problems' eval set")
    evaluate.add_argument("--run", required=True, help="the run id (the DAG run id under Airflow)")
    evaluate.add_argument("--model", required=True, help="registered model, e.g. herd-scout")
    evaluate.add_argument("--version", required=True, help="a version number or an alias (champion, candidate)")
    evaluate.add_argument("--problems", default="", metavar="URI",
                          help="a problems output (default: the one the version was trained with)")
    add_config_args(evaluate)
    for command in (promote, champion, evaluate):
        command.add_argument("--xcom-file", default="", help="also write the output here as JSON (Kubernetes pods)")


def run_registry(args: argparse.Namespace, config_of: Callable[[argparse.Namespace], object]) -> int:
    from tasks.registry.versions import RegistryError
    from tasks.runtime import tracking

    client = tracking.client()
    try:
        if args.registry_command == "promote":
            from tasks.registry.promote import promote

            by = getpass.getuser() if args.override_by is None else args.override_by
            decision = promote(client, args.gate, args.run, args.override, args.override_reason, by)
            print(json.dumps(decision.__dict__, default=list))
            output = decision.champion_uri
        elif args.registry_command == "champion":
            output = champion_output(client, config_of(args), args.variants)
        else:
            from tasks.registry.evaluate import evaluate_version

            result = evaluate_version(client, args.model, args.version, args.run, config_of(args), args.problems)
            print(json.dumps({k: v for k, v in result.items() if k != "by_capability"}))
            output = f"models:/{result['registered_model']}/{result['version']}"
    except RegistryError as err:
        print(f"herd: error: {err}", file=sys.stderr)
        return 2
    if args.xcom_file:
        Path(args.xcom_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.xcom_file).write_text(json.dumps(output))
    print(f"{OUTPUT_LINE_PREFIX}{output}", flush=True)
    return 0


def champion_output(client, config, variants: list[str]) -> str:
    """The herd model output (``model.safetensors``, ``hf/``) of the first variant's champion, or ``""``."""
    from herd.stages.models import VARIANTS
    from tasks.registry import versions

    for variant in variants:
        if variant not in VARIANTS:
            raise versions.RegistryError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
        found = versions.by_alias(client, config.gate.registered_model(variant), versions.CHAMPION)
        if found is not None and (found.tags or {}).get(versions.MODEL_OUTPUT_TAG):
            return found.tags[versions.MODEL_OUTPUT_TAG]
    return ""
