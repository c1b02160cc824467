"""Where stages run, read from the environment of the Airflow side (no I/O at DAG parse time).

``HERD_BACKEND=local`` (the default) runs each stage as a subprocess of the Airflow
worker; ``HERD_BACKEND=kubernetes`` runs it as a pod on the node pool its resources ask
for, or as a gang of pods (a JobSet) when it spans nodes. Every setting has a ``HERD_K8S_*``
variable; the chart (``charts/herd``) writes them into the ConfigMap the Airflow workers
read.
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from herd.config import ConfigError


def _selector(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError(f"node selector {text!r} is not KEY=VALUE[,KEY=VALUE]")
    return {key.strip(): value.strip() for key, value in pairs}


class Toleration(BaseModel):
    """A pod toleration as Kubernetes spells it (``tolerationSeconds`` included)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")


class KubernetesSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = "herd"
    image: str = "herd-trainer:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str = "herd-stage"
    env_secret: str = Field("herd-stage-env", description="Secret with S3 and MLflow credentials, as env vars")
    env_config_map: str = Field("herd-stage-config", description="ConfigMap with HERD_ARTIFACT_ROOT, MLFLOW_TRACKING_URI")
    gpu_pool: dict[str, str] = {"herd.dev/pool": "h100"}
    cpu_pool: dict[str, str] = {"herd.dev/pool": "cpu"}
    priority_class: str = "herd-training"
    run_as_user: int = 1000
    kubernetes_conn_id: str = "kubernetes_default"
    # How long an admitted pod, or every pod of an admitted gang, may stay unscheduled; time in
    # Kueue's queue does not count (a queued single pod may wait its task's execution timeout).
    startup_timeout_seconds: int = 900
    gpu_tolerations: tuple[Toleration, ...] = (
        Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),
    )
    # A stage asks for the GPUs it declares; this is only the bound a pod cannot exceed.
    gpus_per_node: int | None = Field(None, ge=1)
    # Devices every GPU pod asks for besides its GPUs, e.g. {"rdma/ib": "1"} or
    # {"vpc.amazonaws.com/efa": "32"}, and the NCCL environment that makes use of them.
    gpu_devices: dict[str, str] = {}
    nccl_env: dict[str, str] = {}
    # How many nodes a stage spans on this cluster; more than one makes it a gang.
    stage_nodes: dict[str, int] = {}
    gang_mode: Literal["jobset"] = "jobset"
    gang_restarts: int = Field(3, ge=0, description="whole-gang restarts from the last checkpoint after a pod fails")
    gang_poll_seconds: float = Field(15.0, gt=0, description="how often the triggerer reads a gang's state and logs")
    gang_ttl_seconds: int = Field(7 * 24 * 3600, ge=0,
                                  description="how long a finished gang whose logs nobody read is kept")
    rendezvous_port: int = Field(29500, ge=1024, le=65535)
    queue_name: str = Field("", description="Kueue LocalQueue that admits every GPU pod and gang (empty: none)")
    gang_topology_key: str = Field("", description="node label all pods of a gang must share, e.g. the node pool's")
    deferrable: bool = Field(True, description="single pods wait in the triggerer, not on a worker slot")


class BackendSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesSettings = KubernetesSettings()


_ENV = {
    "namespace": "HERD_K8S_NAMESPACE",
    "image": "HERD_K8S_IMAGE",
    "image_pull_policy": "HERD_K8S_IMAGE_PULL_POLICY",
    "service_account": "HERD_K8S_SERVICE_ACCOUNT",
    "env_secret": "HERD_K8S_ENV_SECRET",
    "env_config_map": "HERD_K8S_ENV_CONFIG_MAP",
    "gpu_pool": "HERD_K8S_GPU_POOL",
    "cpu_pool": "HERD_K8S_CPU_POOL",
    "priority_class": "HERD_K8S_PRIORITY_CLASS",
    "run_as_user": "HERD_K8S_RUN_AS_USER",
    "kubernetes_conn_id": "HERD_K8S_CONN_ID",
    "startup_timeout_seconds": "HERD_K8S_STARTUP_TIMEOUT",
    "gpu_tolerations": "HERD_K8S_GPU_TOLERATIONS",
    "gpus_per_node": "HERD_K8S_GPUS_PER_NODE",
    "gpu_devices": "HERD_K8S_GPU_DEVICES",
    "nccl_env": "HERD_K8S_NCCL_ENV",
    "stage_nodes": "HERD_K8S_STAGE_NODES",
    "gang_mode": "HERD_K8S_GANG_MODE",
    "gang_restarts": "HERD_K8S_GANG_RESTARTS",
    "gang_poll_seconds": "HERD_K8S_GANG_POLL_SECONDS",
    "gang_ttl_seconds": "HERD_K8S_GANG_TTL_SECONDS",
    "rendezvous_port": "HERD_K8S_RENDEZVOUS_PORT",
    "queue_name": "HERD_K8S_QUEUE",
    "gang_topology_key": "HERD_K8S_GANG_TOPOLOGY_KEY",
    "deferrable": "HERD_K8S_DEFERRABLE",
}


# Values that may hold commas (NCCL_IB_HCA=mlx5_0,mlx5_1) come as JSON.
_JSON = {"gpu_tolerations": "a JSON list of tolerations", "gpu_devices": "a JSON object of resource: count",
         "nccl_env": "a JSON object of NAME: value"}


def _parse(field: str, value: str) -> object:
    if field.endswith("_pool") or field == "stage_nodes":
        return _selector(value)
    if field in _JSON:
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{_ENV[field]} is not {_JSON[field]}: {err}") from None
    return value


def backend_settings(environ: dict[str, str] | None = None) -> BackendSettings:
    env = os.environ if environ is None else environ
    k8s: dict[str, object] = {}
    for field, variable in _ENV.items():
        if env.get(variable):
            value = env[variable]
            k8s[field] = _parse(field, value)
    try:
        settings = BackendSettings(backend=env.get("HERD_BACKEND", "local"), kubernetes=KubernetesSettings(**k8s))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in err.errors())
        raise ConfigError(f"invalid backend settings from the environment: {problems}") from None
    from herd.pipeline import STAGE_NAMES

    unknown = sorted(set(settings.kubernetes.stage_nodes) - set(STAGE_NAMES))
    if unknown:
        # A misspelt stage would silently run on one node: refuse it by name.
        raise ConfigError(f"HERD_K8S_STAGE_NODES names unknown stages {unknown}; stages: {', '.join(STAGE_NAMES)}")
    return settings
