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

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable
from croniter import croniter

from herd.stages.models import VARIANTS
from herd_airflow.builder import begin_task, herd_dag, recipe_params, recipe_tasks, run_end_tasks, variant_group
from herd_airflow.registry import champion_task

CRON = os.environ.get("HERD_RETRAIN_CRON", "0 3 * * 1")
if not croniter.is_valid(CRON):  # Airflow would only find out when it schedules
    raise ValueError(f"HERD_RETRAIN_CRON={CRON!r} is not a cron expression (e.g. '0 3 * * 1': Mondays 03:00 UTC)")
CORPUS = os.environ.get("HERD_RETRAIN_CORPUS", "")
PRESET = os.environ.get("HERD_RETRAIN_PRESET", "nano")
CORPUS_ASSET = Asset(name="herd_corpus", uri=CORPUS if CORPUS.startswith("s3://") else "herd://corpus")

with herd_dag(
    "llama4_retrain",
    description="Llama 4 retraining: from the champions, on a refreshed data mix, to a gate and a promotion",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(CRON, timezone="UTC"), assets=[CORPUS_ASSET]),
    max_active_runs=1,
    tags=["herd", "llama4", "retrain"],
    doc_md=__doc__,
    params=recipe_params(overrides_example='{"pretrain.steps": 200}', preset=PRESET, corpus=CORPUS,
                         cyberseceval=False),
) as dag:
    begin = begin_task()
    groups = {variant: variant_group(variant) for variant in VARIANTS}
    champions = {variant: champion_task("champion", (variant,), task_group=groups[variant]) for variant in VARIANTS}
    # One tokenizer for all: the teacher's champion's, else a student's (a student and its teacher share it).
    tokenizer_base = champion_task("tokenizer_base", VARIANTS)
    begin >> [tokenizer_base, *champions.values()]
    # In llama4_pipeline these inputs come from (absent) params: there every variant starts from scratch.
    stages = recipe_tasks(begin, groups, fed_by={"init": lambda spec: champions[spec.variant],
                                                 "base": lambda spec: tokenizer_base})
    run_end_tasks(stages, always=[begin, tokenizer_base, *champions.values()])
