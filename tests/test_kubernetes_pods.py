"""Every stage's pod, as the Kubernetes backend would create it, rendered offline and validated strictly."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from conftest import REPO
from herd.deploy import backend_settings
from herd.pipeline import STAGES_BY_ID
from herd.stage import Resources

KUBERNETES_VERSION = "1.32"


def _kubernetes_dag(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("HERD_BACKEND", "kubernetes")
    monkeypatch.setenv("HERD_K8S_IMAGE", "registry.internal/herd-trainer:0.1.0")
    monkeypatch.setenv("HERD_K8S_GPU_POOL", "cloud.google.com/gke-accelerator=nvidia-h100-80gb")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["llama4_pipeline"]


def _pods(dag) -> list:
    """Every pod the DAG starts: each pod task's, and one expansion of each mapped pod task.

    The data mix's ``datamix_*_arguments`` are Python tasks: they run in the Airflow worker.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    pods = []
    for task in dag.tasks:
        if isinstance(task, KubernetesPodOperator):
            pods.append(task)
        elif getattr(task, "operator_class", None) is KubernetesPodOperator:
            arguments = ["datamix", "map", "--shard", "s3://corpus/part-00000.jsonl", "--xcom-file", "/airflow/xcom/return.json"]
            pods.append(KubernetesPodOperator(task_id=task.task_id, arguments=arguments, **task.partial_kwargs))
    return pods


def _render(operator) -> dict:
    pod = operator.build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def _assert_restricted(manifest: dict) -> None:
    spec = manifest["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]


def test_every_task_renders_a_valid_restricted_pod(monkeypatch):
    dag = _kubernetes_dag(monkeypatch)
    pods = _pods(dag)
    assert {"datamix_map", "datamix_reduce"} <= {task.task_id for task in pods}
    for task in pods:
        manifest = _render(task)
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        _assert_restricted(manifest)
        base = manifest["spec"]["containers"][0]
        assert base["image"] == "registry.internal/herd-trainer:0.1.0" and base["command"] == ["herd"]
        mounts = {m["mountPath"] for m in base["volumeMounts"]}
        assert {"/tmp", "/dev/shm"} <= mounts
        sources = base["envFrom"]
        assert {"secretRef": {"name": "herd-stage-env"}} in sources
        if task.task_id in STAGES_BY_ID:
            spec = STAGES_BY_ID[task.task_id]
            assert base["args"][:2] == ["stage", spec.name]
            assert base["args"][-2:] == ["--xcom-file", "/airflow/xcom/return.json"]
            assert len(manifest["spec"]["containers"]) == 2  # the XCom sidecar, restricted as well
            gpus = spec.resources.gpus
            expected_pool = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"} if gpus else {"herd.dev/pool": "cpu"}
            assert manifest["spec"]["nodeSelector"] == expected_pool
            limits = base["resources"]["limits"]
            assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)
            shm = next(v for v in manifest["spec"]["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
        # No secret value is in the pod: credentials come from the Secret by reference only.
        assert "AWS_SECRET_ACCESS_KEY" not in str(manifest)


def test_gpu_stage_lands_on_the_h100_pool_with_gpus_and_toleration(monkeypatch):
    from herd_airflow.kubernetes import pod_operator

    monkeypatch.setenv("HERD_K8S_GPU_POOL", "cloud.google.com/gke-accelerator=nvidia-h100-80gb")
    settings = backend_settings().kubernetes
    operator = pod_operator("pretrain", ["stage", "pretrain"], Resources(cpu="96", memory="1500Gi", gpus=8, shm="256Gi"),
                            settings, returns_output=True)
    manifest = _render(operator)
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    _assert_restricted(manifest)
    spec = manifest["spec"]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "8" and resources["requests"]["cpu"] == "96"
    assert spec["priorityClassName"] == "herd-training"
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}


def test_bad_backend_settings_name_the_variable():
    from herd.config import ConfigError

    with pytest.raises(ConfigError, match="backend"):
        backend_settings({"HERD_BACKEND": "slurm"})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        backend_settings({"HERD_K8S_GPU_POOL": "h100"})
