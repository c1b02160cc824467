"""llama4_retrain: continue the recipe from the current champions, on a schedule and when the corpus changes.

Runs on ``HERD_RETRAIN_CRON`` (default ``0 3 * * 1``: Mondays 03:00 UTC) and whenever the
corpus Asset is updated: ``HERD_RETRAIN_CORPUS`` when it is an ``s3://`` URI (the corpus the
data mix reads), else the Asset ``herd://corpus``, which an ingestion DAG updates with
``outlets=[Asset("herd://corpus")]``. Scheduled runs take the parameters' defaults
(preset ``HERD_RETRAIN_PRESET``, default nano); a manual trigger can change them.

Each variant's ``champion`` task finds its champion in the MLflow Model Registry
(``herd registry champion``); the tokenizer stage keeps the champions' tokenizer (``base``:
continued pretraining needs the same token ids) while encoding the refreshed data mix, and
each variant's pretraining starts from its champion's weights (``init``). Mid-training,
post-training, the evaluations in them, the gate and the promotion follow as in
``llama4_pipeline``. A variant with no champion starts from scratch.

Every stage is cached by its inputs: a rerun with the same corpus and champions reuses all
of them, and a run whose gates fail leaves the champions, so the next run starts from the
same ones. Try it on the embedded default::

    python -c "from airflow.dag_processing.dagbag import DagBag; \\
               DagBag('dags').dags['llama4_retrain'].test(run_conf={'preset': 'nano'})"
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, TaskGroup
from croniter import croniter

from herd.pipeline import PRESETS, STAGE_NAMES, STAGES, override_schema
from herd.stages.models import VARIANTS
from herd_airflow.factory import command_task, config_arguments, overrides_json, run_end_tasks, stage_arguments
from herd_airflow.registry import OVERRIDE_PARAM, champion_task, gate_override_param, promote_task

CRON = os.environ.get("HERD_RETRAIN_CRON", "0 3 * * 1")
if not croniter.is_valid(CRON):  # Airflow would only find out when it schedules
    raise ValueError(f"HERD_RETRAIN_CRON={CRON!r} is not a cron expression (e.g. '0 3 * * 1': Mondays 03:00 UTC)")
CORPUS = os.environ.get("HERD_RETRAIN_CORPUS", "")
PRESET = os.environ.get("HERD_RETRAIN_PRESET", "nano")
CORPUS_ASSET = Asset(name="herd_corpus", uri=CORPUS if CORPUS.startswith("s3://") else "herd://corpus")
# Which task's XCom feeds a stage's user-data input here (in llama4_pipeline these come from params).
TOKENIZER_BASE = "tokenizer_base"


def retrain_arguments(spec) -> list[str]:
    """The stage's command line, with the champion's model as ``init`` and its tokenizer as ``base``."""
    arguments = stage_arguments(spec)
    sources = {"init": f"{spec.variant}.champion", "base": TOKENIZER_BASE}
    for key, task_id in sources.items():
        if key in spec.inputs:
            from_params = arguments.index(f"{key}={{{{ params.get('{key}') or '' }}}}")
            arguments[from_params] = f"{key}={{{{ ti.xcom_pull(task_ids='{task_id}') or '' }}}}"
    return arguments


with DAG(
    dag_id="llama4_retrain",
    description="Llama 4 retraining: from the champions, on a refreshed data mix, to a gate and a promotion",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=[CORPUS_ASSET]),
    catchup=False,
    max_active_runs=1,
    tags=["herd", "llama4", "retrain"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True},
    user_defined_macros={"herd_overrides": overrides_json},
    params={
        "preset": Param(PRESET, type="string", enum=sorted(PRESETS), title="Preset"),
        "languages": Param([], type="array", items={"type": "string", "pattern": "^[a-z]{3}$"}, title="Languages",
                           description="ISO 639-3 codes to keep in the mix; empty keeps every language."),
        "stages": Param(list(STAGE_NAMES), type="array", items={"type": "string", "enum": STAGE_NAMES},
                        uniqueItems=True, minItems=1, title="Stages",
                        description="Stages to compute; the others reuse their cached output."),
        "force": Param(False, type="boolean", title="Force", description="Recompute selected stages even if cached."),
        "corpus": Param(CORPUS, type=["string", "null"], pattern=r"^$|^(s3|file)://\S+$|^/\S*$", title="Corpus",
                        description="Raw corpus: absolute path, file:// or s3:// URI; empty uses the UDHR seed corpus."),
        "overrides": Param({}, **override_schema(), title="Config overrides",
                           description='Dotted config fields, e.g. {"pretrain.steps": 200}.'),
        OVERRIDE_PARAM: gate_override_param(),
    },
) as dag:
    begin = command_task("begin", ["run", "begin", "--run", "{{ run_id }}", *config_arguments()])
    groups = {variant: TaskGroup(variant, tooltip=f"Llama 4 {variant.title()}") for variant in VARIANTS}
    champions = {variant: champion_task("champion", (variant,), task_group=groups[variant]) for variant in VARIANTS}
    # One tokenizer for all: the teacher's champion's, else a student's (a student and its teacher share it).
    tokenizer_base = champion_task(TOKENIZER_BASE, VARIANTS)
    begin >> [tokenizer_base, *champions.values()]
    stage_tasks, promote_tasks = {}, []
    for spec in STAGES:
        stage_tasks[spec.id] = command_task(spec.name, retrain_arguments(spec), spec.resources, returns_output=True,
                                            doc_md=spec.summary, task_group=groups.get(spec.variant))
        upstream = [stage_tasks[stage_id] for stage_id in spec.upstream] or [begin]
        if "init" in spec.inputs:
            upstream.append(champions[spec.variant])
        if "base" in spec.inputs:
            upstream.append(tokenizer_base)
        upstream >> stage_tasks[spec.id]
        if spec.name == "gate":
            promote_tasks.append(promote_task(spec, task_group=groups[spec.variant]))
            stage_tasks[spec.id] >> promote_tasks[-1]
    run_end_tasks([*stage_tasks.values(), *promote_tasks], always=[begin, tokenizer_base, *champions.values()])
