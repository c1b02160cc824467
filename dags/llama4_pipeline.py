"""llama4_pipeline: the Llama 4 recipe, one task per stage, triggered from the form in the UI.

Model stages run once per variant, each variant in its own task group: ``behemoth.pretrain``,
``scout.pretrain`` -> ``scout.midtrain``, ``maverick.pretrain`` -> ``maverick.midtrain``.

Each variant ends in its ``gate`` (figures against thresholds and the champion; the model is
registered in MLflow as ``candidate``) and ``promote`` (the ``champion`` alias moves if the gate
passed, or if the ``gate_override`` parameter names the variant, with a reason).

Each task runs ``herd stage NAME`` locally or as a Kubernetes pod (``HERD_BACKEND``). A stage
whose output for the same inputs, config and code exists is skipped by the stage itself;
a stage left out of ``stages`` only reuses such an output. Every run has a parent MLflow
run; each stage logs a nested one. Only output URIs cross XCom.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, TaskGroup

from herd.pipeline import PRESETS, STAGE_NAMES, STAGES, override_schema
from herd_airflow.factory import command_task, config_arguments, overrides_json, run_end_tasks, stage_task
from herd_airflow.registry import OVERRIDE_PARAM, gate_override_param, promote_task

with DAG(
    dag_id="llama4_pipeline",
    description="Llama 4 recipe: data mix, tokenizer, and the stages that follow",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["herd", "llama4"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": True},
    user_defined_macros={"herd_overrides": overrides_json},
    params={
        "preset": Param("nano", type="string", enum=sorted(PRESETS), title="Preset",
                        description="Model and data scale: nano runs on a laptop CPU."),
        "languages": Param([], type="array", items={"type": "string", "pattern": "^[a-z]{3}$"}, title="Languages",
                           description="ISO 639-3 codes to keep in the mix; empty keeps every language."),
        "stages": Param(list(STAGE_NAMES), type="array", items={"type": "string", "enum": STAGE_NAMES},
                        uniqueItems=True, minItems=1, examples=list(STAGE_NAMES), title="Stages",
                        description="Stages to compute; the others reuse their cached output."),
        "force": Param(False, type="boolean", title="Force", description="Recompute selected stages even if cached."),
        "corpus": Param("", type=["string", "null"], pattern=r"^$|^(s3|file)://\S+$|^/\S*$", title="Corpus",
                        description="Raw corpus: absolute path, file:// or s3:// URI; empty uses the UDHR seed corpus."),
        "cyberseceval": Param("", type=["string", "null"], pattern=r"^$|^(s3|file)://\S+$|^/\S*$", title="CyberSecEval datasets",
                              description="Folder of PurpleLlama's CyberSecEval JSON files for the guards and safety "
                                          "stages; empty uses HERD_CYBERSECEVAL_URI, $HERD_HOME/cyberseceval or the "
                                          "repository's data/cyberseceval, the first there (none: skipped, and recorded)."),
        "overrides": Param({}, **override_schema(), title="Config overrides",
                           description='Dotted config fields, e.g. {"datamix.min_chars": 60}.'),
        OVERRIDE_PARAM: gate_override_param(),
    },
) as dag:
    begin = command_task("begin", ["run", "begin", "--run", "{{ run_id }}", *config_arguments()])
    stage_tasks, groups = {}, {}
    for spec in STAGES:
        if spec.variant and spec.variant not in groups:
            groups[spec.variant] = TaskGroup(spec.variant, tooltip=f"Llama 4 {spec.variant.title()}")
        stage_tasks[spec.id] = stage_task(spec, task_group=groups.get(spec.variant))
        upstream = [stage_tasks[stage_id] for stage_id in spec.upstream] or [begin]
        upstream >> stage_tasks[spec.id]
    promote_tasks = []
    for spec in STAGES:
        if spec.name == "gate":
            promote_tasks.append(promote_task(spec, task_group=groups[spec.variant]))
            stage_tasks[spec.id] >> promote_tasks[-1]
    run_end_tasks([*stage_tasks.values(), *promote_tasks], always=[begin])
