"""The one factory: a herd command and its resources -> an Airflow operator for the configured backend.

The DAGs' tasks come from :func:`stage_task` and :func:`command_task`, which choose the
operator: a local process, one Kubernetes pod, or a gang of pods for a stage that spans
nodes. The backend comes from ``HERD_BACKEND`` (see :mod:`herd.deploy`). Arguments are
Jinja templates rendered at run time, so the same DAG serves every preset and parameter set.

On Kubernetes a GPU task takes one slot per GPU from its stage kind's Airflow pool
(``herd-gpu-pretrain``, ``herd-gpu-sft``, ...), so a pool's size bounds the GPUs that kind
holds at once; the chart's ``pools`` value lists them (``airflow pools import``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from herd.deploy import BackendSettings, backend_settings
from herd.pipeline import downstream_names
from herd.stage import Resources, StageSpec
from herd_airflow.local import LocalStageOperator

LIGHT = Resources(cpu="500m", memory="1Gi", shm="64Mi")


def overrides_json(params: dict[str, Any]) -> str:
    """The run's config overrides as one JSON argument: the form's ``overrides`` plus its ``languages``."""
    overrides = dict(params.get("overrides") or {})
    if params.get("languages"):
        overrides["datamix.languages"] = list(params["languages"])
    return json.dumps(overrides, sort_keys=True)


def config_arguments() -> list[str]:
    return ["--config", "{{ params.preset }}", "--overrides", "{{ herd_overrides(params) }}"]


def stage_arguments(spec: StageSpec, fed_by: Mapping[str, str] | None = None) -> list[str]:
    """``herd stage`` for ``spec``; ``fed_by`` names, by input key, the task whose XCom feeds a user-data input."""
    fed_by = fed_by or {}
    arguments = ["stage", spec.name, "--run", "{{ run_id }}", *config_arguments()]
    if spec.variant:
        arguments += ["--variant", spec.variant]
    # A left-out stage only reuses its output. Without one it fails the run if a selected stage
    # needs it, and is skipped (with what follows it) if none does.
    needed_by = downstream_names(spec.id)
    arguments += ["--force={{ params.force }}", f"--reuse-only={{{{ '{spec.name}' not in params.stages }}}}",
                  f"--skip-if-missing={{{{ params.stages | select('in', {needed_by!r}) | list | length == 0 }}}}"]
    for key, slot in spec.inputs.items():
        # A user-data input comes from the task that feeds it, else from the DAG parameter of its name,
        # if the DAG has one. Either may be empty (the form sends a cleared field as null, a task may
        # find nothing), which must render empty, not "None".
        if slot.from_stage:
            source = f"{{{{ ti.xcom_pull(task_ids='{slot.from_stage}') }}}}"
        elif key in fed_by:
            source = f"{{{{ ti.xcom_pull(task_ids='{fed_by[key]}') or '' }}}}"
        else:
            source = f"{{{{ params.get('{key}') or '' }}}}"
        arguments += ["--in", f"{key}={source}"]
    return arguments


def gpu_pool_name(task_id: str) -> str:
    """The Airflow pool of a GPU task: one per stage kind, whatever the variant (``scout.sft`` -> ``herd-gpu-sft``)."""
    return f"herd-gpu-{task_id.rsplit('.', 1)[-1]}"


def command_task(task_id: str, arguments: list[str], resources: Resources = LIGHT,
                 returns_output: bool = False, settings: BackendSettings | None = None, **kwargs: Any):
    """A local process, one pod, or a gang of pods when the stage spans nodes on this cluster."""
    settings = settings or backend_settings()
    if settings.backend != "kubernetes":
        return LocalStageOperator(task_id=task_id, arguments=arguments, **kwargs)
    # The cncf-kubernetes provider and the Kubernetes client load only where the backend is Kubernetes.
    from herd_airflow.gang import GangOperator
    from herd_airflow.kubernetes import pod_operator
    from herd_airflow.manifests import effective_resources

    cluster = settings.kubernetes
    resources = effective_resources(task_id.rsplit(".", 1)[-1], resources, cluster)
    if resources.gpus:
        kwargs.setdefault("pool", gpu_pool_name(task_id))
        kwargs.setdefault("pool_slots", resources.gpus * resources.nodes)
    if resources.nodes > 1:
        return GangOperator(task_id=task_id, arguments=arguments, stage_resources=resources, settings=cluster,
                               **kwargs)
    return pod_operator(task_id, arguments, resources, cluster, returns_output, **kwargs)


def stage_task(spec: StageSpec, fed_by: Mapping[str, str] | None = None, settings: BackendSettings | None = None,
               **kwargs: Any):
    return command_task(spec.name, stage_arguments(spec, fed_by), spec.resources, returns_output=True,
                        settings=settings, doc_md=spec.summary, execution_timeout=spec.timeout, **kwargs)
