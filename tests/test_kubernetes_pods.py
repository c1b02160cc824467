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
    for task in dag.tasks:
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
            # The output URI leaves by the termination message: no XCom sidecar to exec into.
            assert base["args"][-2:] == ["--xcom-file", "/dev/termination-log"]
            assert len(manifest["spec"]["containers"]) == 1
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


def test_the_output_uri_is_read_from_the_stage_containers_termination_message():
    from kubernetes.client import V1ContainerState, V1ContainerStateTerminated, V1ContainerStatus, V1Pod, V1PodStatus

    from herd_airflow.kubernetes import termination_output

    def pod(*containers: tuple[str, str | None]) -> V1Pod:
        return V1Pod(status=V1PodStatus(container_statuses=[
            V1ContainerStatus(name=name, image="i", image_id="", ready=False, restart_count=0,
                              state=V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=0, message=message)))
            for name, message in containers]))

    uri = "s3://herd/artifacts/datamix/0a1b2c3d"
    assert termination_output(pod(("istio-proxy", '"s3://elsewhere"'), ("base", f'"{uri}"')), "base") == uri
    assert termination_output(pod(("base", None)), "base") is None  # a stage with no output
    assert termination_output(V1Pod(status=V1PodStatus()), "base") is None
