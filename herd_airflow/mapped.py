"""The data mix's first pass as Airflow dynamically mapped tasks, before the ``datamix`` stage.

    datamix_shards -> datamix_map[shard] (mapped) -> datamix_reduce[partition] (mapped) -> datamix

``datamix_shards`` lists the input files (none when the stage's output exists or the stage is
not selected); ``datamix_map`` expands over them, a process each on the embedded default and
a pod each on Kubernetes, at most ``HERD_DATAMIX_PARALLEL`` at once per run and within the
Airflow pool ``HERD_DATAMIX_POOL``; ``datamix_reduce`` expands over the key partitions with
every map output's URI. The stage, run with ``datamix.map_reduce=true``, then finds each map
and reduce output complete and merges, budgets and mixes. A retried map or reducer rewrites
its output whole; only published outputs (with ``_SUCCESS``) are read.
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.sdk import TriggerRule, get_current_context, task

from herd.deploy import backend_settings
from herd.stage import Resources, StageSpec
from herd_airflow.factory import command_task, config_arguments, overrides_json, stage_arguments
from herd_airflow.local import LocalStageOperator

MAP_RESOURCES = Resources(cpu="1", memory="2Gi", shm="64Mi")  # one shard, streamed
REDUCE_RESOURCES = Resources(cpu="1", memory="4Gi", shm="64Mi")  # one partition's keys, sorted in memory
MAP_RETRIES = 3


def _mapped(task_id: str, resources: Resources, arguments: Any, **kwargs: Any):
    """``task_id`` once per item of ``arguments`` (an XCom list of argument lists), bounded by the pool."""
    kwargs = {"pool": os.environ.get("HERD_DATAMIX_POOL", "default_pool"),
              "max_active_tis_per_dagrun": int(os.environ.get("HERD_DATAMIX_PARALLEL", "2")),
              "retries": MAP_RETRIES, **kwargs}
    settings = backend_settings()
    if settings.backend != "kubernetes":
        return LocalStageOperator.partial(task_id=task_id, **kwargs).expand(arguments=arguments)
    from herd_airflow.kubernetes import StagePodOperator, pod_operator_fields
    from herd_airflow.manifests import effective_resources

    resources = effective_resources(task_id, resources, settings.kubernetes)
    fields = pod_operator_fields(task_id, resources, settings.kubernetes, returns_output=True)
    return StagePodOperator.partial(task_id=task_id, **fields, **kwargs).expand(arguments=arguments)


def _value(xcom: Any) -> Any:
    """A pod's XCom is JSON already; a local process's is the text after ``HERD_OUTPUT=``."""
    return json.loads(xcom) if isinstance(xcom, str) else xcom


@task(task_id="datamix_map_arguments")
def map_arguments(listing: Any, xcom_tail: list[str]) -> list[list[str]]:
    params = get_current_context()["params"]
    config = ["--config", params["preset"], "--overrides", overrides_json(params)]
    return [["datamix", "map", "--shard", shard, *config, *xcom_tail] for shard in _value(listing)["shards"]]


@task(task_id="datamix_reduce_arguments")
def reduce_arguments(listing: Any, maps: Any, xcom_tail: list[str]) -> list[list[str]]:
    params = get_current_context()["params"]
    config = ["--config", params["preset"], "--overrides", overrides_json(params)]
    uris = ",".join(maps)  # in map index order: the shards' order, which decides which copy is kept
    return [["datamix", "reduce", "--maps", uris, "--partition", str(p), *config, *xcom_tail]
            for p in range(_value(listing)["partitions"])]


def sharded_first_pass(spec: StageSpec, fed_by: dict[str, str]) -> tuple[Any, Any]:
    """The tasks before the datamix stage: (first, last); the stage itself follows ``last``."""
    inputs = [arg for arg in stage_arguments(spec, fed_by) if arg.startswith("corpus=")]
    settings = backend_settings()
    xcom_tail = []
    if settings.backend == "kubernetes":  # a pod's output leaves by its container's termination message
        from herd_airflow.kubernetes import TERMINATION_MESSAGE

        xcom_tail = ["--xcom-file", TERMINATION_MESSAGE]
    shards = command_task("datamix_shards", [
        "datamix", "shards", "--run", "{{ run_id }}", *config_arguments(), "--in", *inputs,
        "--reuse-only", "{{ 'datamix' not in params.stages }}",
    ], returns_output=True)
    maps = _mapped("datamix_map", MAP_RESOURCES, map_arguments(shards.output, xcom_tail))
    reduces = _mapped("datamix_reduce", REDUCE_RESOURCES, reduce_arguments(shards.output, maps.output, xcom_tail))
    maps >> reduces
    return shards, reduces


def datamix_stage_arguments(arguments: list[str]) -> list[str]:
    """The stage's own command after the mapped tasks: the first pass from their outputs."""
    return [*arguments, "--set", "datamix.map_reduce=true"]


MAPPED_STAGE_TRIGGER = TriggerRule.NONE_FAILED  # maps expanded over no shard are skipped, not failed
