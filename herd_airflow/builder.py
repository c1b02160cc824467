"""What the three herd DAGs share, written once: their params, their DAG settings and the recipe's wiring.

A DAG file declares what is its own (schedule, docs, where a stage's inputs come from) and
builds the rest here. Like :mod:`herd_airflow.factory`, this only assembles operators and
templates: nothing runs and nothing is read at parse time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, TriggerRule

from herd.pipeline import PRESETS, STAGE_NAMES, STAGES, override_schema
from herd.stage import StageSpec
from herd.stages.models import VARIANTS
from herd_airflow.factory import command_task, config_arguments, overrides_json, stage_arguments, stage_task
from herd_airflow.mapped import MAPPED_STAGE_TRIGGER, datamix_stage_arguments, sharded_first_pass
from herd_airflow.registry import OVERRIDE_PARAM, gate_override_param, promote_task

RECIPE_RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True}
# Empty (the default input), an absolute path, or a file:// or s3:// URI.
URI_PATTERN = r"^$|^(s3|file)://\S+$|^/\S*$"


def herd_dag(dag_id: str, *, params: dict[str, Param], default_args: dict[str, Any] = RECIPE_RETRIES,
             **kwargs: Any) -> DAG:
    """A DAG run with herd's params: never caught up, with the ``herd_overrides`` macro its commands render."""
    return DAG(dag_id=dag_id, catchup=False, default_args=default_args, params=params,
               user_defined_macros={"herd_overrides": overrides_json}, **kwargs)


def preset_param(default: str = "nano",
                 description: str = "Model and data scale: nano runs on a laptop CPU.") -> Param:
    return Param(default, type="string", enum=sorted(PRESETS), title="Preset", description=description)


def uri_param(default: str, title: str, description: str) -> Param:
    # The form sends a cleared field as null: a field that must not be null keeps Trigger greyed out.
    return Param(default, type=["string", "null"], pattern=URI_PATTERN, title=title, description=description)


def overrides_param(example: str) -> Param:
    return Param({}, **override_schema(), title="Config overrides", description=f"Dotted config fields, e.g. {example}.")


def recipe_params(*, overrides_example: str, preset: str = "nano", corpus: str = "",
                  cyberseceval: bool = True) -> dict[str, Param]:
    """The trigger form of a run of the recipe, in the form's order.

    ``preset`` and ``corpus`` are the defaults a scheduled run takes; ``cyberseceval`` says
    whether the form offers the CyberSecEval datasets folder (else the stages find their own).
    """
    params = {
        "preset": preset_param(preset),
        "languages": Param([], type="array", items={"type": "string", "pattern": "^[a-z]{3}$"}, title="Languages",
                           description="ISO 639-3 codes to keep in the mix; empty keeps every language."),
        "stages": Param(list(STAGE_NAMES), type="array", items={"type": "string", "enum": STAGE_NAMES},
                        uniqueItems=True, minItems=1, examples=list(STAGE_NAMES), title="Stages",
                        description="Stages to compute; the others reuse their cached output."),
        "force": Param(False, type="boolean", title="Force", description="Recompute selected stages even if cached."),
        "corpus": uri_param(corpus, "Corpus",
                            "Raw corpus: absolute path, file:// or s3:// URI; empty uses the UDHR seed corpus."),
    }
    if cyberseceval:
        params["cyberseceval"] = uri_param(
            "", "CyberSecEval datasets",
            "Folder of PurpleLlama's CyberSecEval JSON files for the guards and safety stages; empty uses "
            "HERD_CYBERSECEVAL_URI, $HERD_HOME/cyberseceval or the repository's data/cyberseceval, the first "
            "there (none: skipped, and recorded).")
    params["overrides"] = overrides_param(overrides_example)
    params[OVERRIDE_PARAM] = gate_override_param()
    return params


def begin_task():
    """``begin``: opens the run's MLflow parent run."""
    return command_task("begin", ["run", "begin", "--run", "{{ run_id }}", *config_arguments()])


def variant_group(variant: str) -> TaskGroup:
    return TaskGroup(variant, tooltip=f"Llama 4 {variant.title()}")


def recipe_tasks(begin: Any, groups: dict[str, TaskGroup] | None = None,
                 fed_by: Mapping[str, Callable[[StageSpec], Any]] | None = None) -> list:
    """Every stage after ``begin`` and each gate's promotion, a variant's in its group; returns them all.

    ``groups`` are the variants' groups made so far (more are made as their first stage comes).
    ``fed_by`` gives, by input key, the task whose output feeds that user-data input of a stage
    (else the DAG parameter of its name does); that task runs before the stage.
    """
    groups = {} if groups is None else groups
    stage_tasks, promote_tasks = {}, []
    for spec in STAGES:
        if spec.variant and spec.variant not in groups:
            groups[spec.variant] = variant_group(spec.variant)
        feeders = {key: feeder(spec) for key, feeder in (fed_by or {}).items() if key in spec.inputs}
        fed = {key: feeder.task_id for key, feeder in feeders.items()}
        upstream = [stage_tasks[stage_id] for stage_id in spec.upstream] or [begin]
        if spec.name == "datamix":  # its first pass as mapped tasks, then the stage merges and mixes
            first, last = sharded_first_pass(spec, fed)
            [*upstream, *feeders.values()] >> first
            upstream = [last]
            task = command_task(spec.name, datamix_stage_arguments(stage_arguments(spec, fed)), spec.resources,
                                returns_output=True, doc_md=spec.summary, trigger_rule=MAPPED_STAGE_TRIGGER,
                                execution_timeout=spec.timeout)
        else:
            task = stage_task(spec, fed, task_group=groups.get(spec.variant))
        [*upstream, *feeders.values()] >> task
        stage_tasks[spec.id] = task
        if spec.name == "gate":
            promote_tasks.append(promote_task(spec, task_group=groups[spec.variant]))
            task >> promote_tasks[-1]
    return [*stage_tasks.values(), *promote_tasks]


def run_end_tasks(stages: list, always: list) -> tuple:
    """``finish`` (closes the MLflow parent run as success) and ``finish_failed`` (as failed, if any task failed).

    Left-out stages nothing selected needs are skipped, and the run still succeeds. ``finish``
    waits on every stage, not only the leaves: a skip runs ahead down the graph, so a leaf may be
    skipped before a failure upstream of it is known. ``always`` are the tasks before the stages.
    """
    finish = command_task("finish", ["run", "end", "--run", "{{ run_id }}", "--status", "success"],
                          trigger_rule=TriggerRule.NONE_FAILED)
    finish_failed = command_task("finish_failed", ["run", "end", "--run", "{{ run_id }}", "--status", "failed"],
                                 trigger_rule=TriggerRule.ONE_FAILED, retries=0)
    stages >> finish
    [*always, *stages] >> finish_failed
    return finish, finish_failed
