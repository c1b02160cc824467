"""``make demo``: run ``llama4_pipeline`` through Airflow on the embedded default, then say where to look.

    python -m tasks.demo                        # every stage, nano preset
    python -m tasks.demo --set datamix.min_chars=60 --stages tokenizer
    python -m tasks.demo --gate-override scout --override-reason "accepted for the demo"
    python -m tasks.demo --dag llama4_retrain   # continue from the champions the first run promoted

Airflow runs the DAG in-process with ``dag.test()`` against a sqlite database under
``$HERD_HOME/airflow``; stages run as local subprocesses; MLflow and artifacts live under
``$HERD_HOME`` too. A second run finds every stage's output and skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEADLINE_METRICS = {
    "docs_in", "docs_kept", "languages_in_mix", "languages_above_floor", "lid_label_agreement", "mb_per_second",
    "vocab_size", "tokens_total", "tokens_per_char_median", "fertility_languages",
    "model", "params_total", "params_active", "first_loss", "final_loss", "tokens_per_second", "mfu",
    "recall_before_midtrain", "recall_at_trained_length", "recall_beyond_temperature", "recall_beyond_no_temperature",
    "output_guard_test_unsafe_recall", "prompt_guard_cse_malicious_recall", "output_guard_cse_unsafe_recall",
    "prompt_injection_success_rate", "mitre_refusal_rate", "interpreter_malicious_rate", "goat_asr",
    "cyberseceval_skipped", "cyberseceval_unscored", "verdict", "failed", "registered_model", "model_version",
}
DAGS = ("llama4_pipeline", "llama4_retrain")


def airflow_environment(home: Path) -> dict[str, str]:
    """The settings of the embedded Airflow; also used by the tests."""
    return {
        "HERD_HOME": str(home),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("HERD_AIRFLOW_LOG_LEVEL", "INFO"),
    }


def migrate(env: dict[str, str]) -> None:
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], env={**os.environ, **env}, check=True,
                   stdout=subprocess.DEVNULL)


def run_pipeline(conf: dict, dag_id: str = "llama4_pipeline") -> tuple[str, str]:
    """Runs the DAG once; returns (run id, state). Airflow must already see ``airflow_environment``."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag_run = bag.get_dag(dag_id).test(run_conf=conf)
    return dag_run.run_id, str(dag_run.state)


def task_outputs(dag_id: str, run_id: str) -> dict[str, str]:
    """What each task of the run returned (its XCom): a stage's output URI, by task id."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, key="return_value")).all()
        return {row.task_id: XComModel.deserialize_value(row) for row in rows}


def _summary(dag_id: str, run_id: str, state: str, conf: dict, seconds: float) -> None:
    from herd.pipeline import STAGES, load_config
    from herd_airflow.factory import overrides_json
    from tasks.registry import versions
    from tasks.runtime import storage, tracking
    from tasks.runtime.home import artifact_root
    from tasks.runtime.step import STEP_FILE

    config = load_config(conf.get("preset", "nano"), json.loads(overrides_json(conf)))
    outputs = task_outputs(dag_id, run_id)
    print(f"\n{dag_id} run {run_id}: {state} in {seconds:.0f} s")
    for spec in STAGES:
        uri = outputs.get(spec.id)
        if not uri:
            print(f"  {spec.id:<18} no output in this run")
            continue
        step = json.loads(storage.read_text(storage.join(uri, STEP_FILE)))
        computed = step["run_id"] == run_id
        how = "computed" if computed else f"reused (computed by {step['run_id']})"
        wall = f"{step.get('wall_seconds', 0):.0f} s" if computed else ""
        print(f"  {spec.id:<18} {how:<60} {wall:>7}  {uri}")
        shown = {k: v for k, v in step["metrics"].items() if k in HEADLINE_METRICS}
        print(f"  {'':<18}   " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    client = tracking.client()
    print("\nModel Registry:")
    for variant in sorted({spec.variant for spec in STAGES if spec.name == "gate"}):
        name = config.gate.registered_model(variant)
        aliases = {alias: versions.by_alias(client, name, alias) for alias in (versions.CANDIDATE, versions.CHAMPION)}
        print(f"  {name:<18} " + ", ".join(f"{alias} v{found.version}" if found else f"no {alias}"
                                           for alias, found in aliases.items()))
    parent = tracking.find_parent(client, run_id)
    store = tracking.tracking_uri()
    print("\nWhere to look:")
    print(f"  MLflow parent run  {parent.info.run_id if parent else '(none)'} in experiment '{tracking.EXPERIMENT}'")
    print(f"  MLflow UI          {sys.executable} -m mlflow ui --backend-store-uri {store}")
    print(f"  artifacts          {artifact_root()}")
    print(f"  the plan           {sys.executable} -m tasks.cli plan")
    print(f"  Airflow UI         AIRFLOW_HOME={os.environ['AIRFLOW_HOME']} AIRFLOW__CORE__DAGS_FOLDER={REPO / 'dags'} "
          f"{Path(sys.executable).parent / 'airflow'} standalone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.demo")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", nargs="*", default=None)
    parser.add_argument("--languages", nargs="*", default=[])
    parser.add_argument("--corpus", default="")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--dag", choices=DAGS, default=DAGS[0])
    parser.add_argument("--gate-override", nargs="*", default=[], metavar="VARIANT",
                        help="promote these variants even if their gate fails (needs --override-reason)")
    parser.add_argument("--override-reason", default="")
    args = parser.parse_args(argv)

    from herd.config import parse_override
    from herd.pipeline import STAGE_NAMES

    home = Path(os.environ.get("HERD_HOME", ".herd")).resolve()
    env = airflow_environment(home)
    os.environ.update(env)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    conf = {
        "preset": args.preset,
        "stages": args.stages or STAGE_NAMES,
        "languages": args.languages,
        "force": args.force,
        "corpus": args.corpus,
        "overrides": dict(parse_override(s) for s in args.sets),
        "gate_override": {"variants": args.gate_override, "reason": args.override_reason},
    }
    clock = time.monotonic()
    migrate(env)
    run_id, state = run_pipeline(conf, args.dag)
    _summary(args.dag, run_id, state, conf, time.monotonic() - clock)
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
