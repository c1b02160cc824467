"""Where stages run, read from the environment of the Airflow side (no I/O at DAG parse time).

``HERD_BACKEND=local`` (the default) runs each stage as a subprocess of the Airflow
worker; ``HERD_BACKEND=kubernetes`` runs it as a pod on the node pool its resources ask
for. Every setting has a ``HERD_K8S_*`` variable; the chart sets them for the scheduler.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from herd.config import ConfigError


def _selector(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError(f"node selector {text!r} is not KEY=VALUE[,KEY=VALUE]")
    return {key.strip(): value.strip() for key, value in pairs}


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
    startup_timeout_seconds: int = 900


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
}


def backend_settings(environ: dict[str, str] | None = None) -> BackendSettings:
    env = os.environ if environ is None else environ
    k8s: dict[str, object] = {}
    for field, variable in _ENV.items():
        if env.get(variable):
            value = env[variable]
            k8s[field] = _selector(value) if field.endswith("_pool") else value
    try:
        return BackendSettings(backend=env.get("HERD_BACKEND", "local"), kubernetes=KubernetesSettings(**k8s))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in err.errors())
        raise ConfigError(f"invalid backend settings from the environment: {problems}") from None
