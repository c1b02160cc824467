"""``make demo``: run ``llama4_pipeline`` through Airflow on the embedded default, then say where to look.

    python -m herd_airflow.demo                        # every stage, nano preset
    python -m herd_airflow.demo --set datamix.min_chars=60 --stages tokenizer

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
    "cyberseceval_skipped",
}


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


def run_pipeline(conf: dict) -> tuple[str, str]:
    """Runs the DAG once; returns (run id, state). Airflow must already see ``airflow_environment``."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag_run = bag.get_dag("llama4_pipeline").test(run_conf=conf)
    return dag_run.run_id, str(dag_run.state)


def _summary(run_id: str, state: str, conf: dict, seconds: float) -> None:
    from herd.pipeline import load_config
    from herd_airflow.factory import overrides_json
    from tasks.runtime import tracking
    from tasks.runtime.home import artifact_root, default_corpus
    from tasks.runtime.step import STEP_FILE, plan
    from tasks.runtime import storage

    config = load_config(conf.get("preset", "nano"), json.loads(overrides_json(conf)))
    print(f"\nllama4_pipeline run {run_id}: {state} in {seconds:.0f} s")
    for planned in plan(config, artifact_root(), {"corpus": conf.get("corpus") or default_corpus()}):
        if planned.complete:
            step = json.loads(storage.read_text(storage.join(planned.uri, STEP_FILE)))
            how = "computed" if step["run_id"] == run_id else f"reused (computed by {step['run_id']})"
            print(f"  {planned.spec.id:<18} {how:<60} {planned.uri}")
            shown = {k: v for k, v in step["metrics"].items() if k in HEADLINE_METRICS}
            print(f"  {'':<18}   " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        else:
            print(f"  {planned.spec.id:<18} not complete")
    parent = tracking.find_parent(tracking.client(), run_id)
    store = tracking.tracking_uri()
    print("\nWhere to look:")
    print(f"  MLflow parent run  {parent.info.run_id if parent else '(none)'} in experiment '{tracking.EXPERIMENT}'")
    print(f"  MLflow UI          {sys.executable} -m mlflow ui --backend-store-uri {store}")
    print(f"  artifacts          {artifact_root()}")
    print(f"  the plan           {sys.executable} -m tasks.cli plan")
    print(f"  Airflow UI         AIRFLOW_HOME={os.environ['AIRFLOW_HOME']} AIRFLOW__CORE__DAGS_FOLDER={REPO / 'dags'} "
          f"{Path(sys.executable).parent / 'airflow'} standalone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herd_airflow.demo")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stages", nargs="*", default=None)
    parser.add_argument("--languages", nargs="*", default=[])
    parser.add_argument("--corpus", default="")
    parser.add_argument("--force", action="store_true")
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
    }
    clock = time.monotonic()
    migrate(env)
    run_id, state = run_pipeline(conf)
    _summary(run_id, state, conf, time.monotonic() - clock)
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
