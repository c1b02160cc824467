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


def _kubernetes_dag(monkeypatch, **env: str):
    from airflow.dag_processing.dagbag import DagBag

    for name, value in env.items():
        monkeypatch.setenv(name, value)
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

    from herd_airflow.kubernetes import TERMINATION_MESSAGE, StagePodOperator

    pods = []
    for task in dag.tasks:
        if isinstance(task, KubernetesPodOperator):
            pods.append(task)
        elif getattr(task, "operator_class", None) is StagePodOperator:
            arguments = ["datamix", "map", "--shard", "s3://corpus/part-00000.jsonl", "--xcom-file", TERMINATION_MESSAGE]
            pods.append(StagePodOperator(task_id=task.task_id, arguments=arguments, **task.partial_kwargs))
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
            gpus = spec.resources.gpus
            # A GPU pod runs one worker per GPU through herd launch; a CPU pod runs the stage itself.
            command = base["args"][2:] if gpus else base["args"]
            assert command[:2] == ["stage", spec.name]
            # The output URI leaves by the termination message: no XCom sidecar to exec into.
            assert base["args"][-2:] == ["--xcom-file", "/dev/termination-log"]
            assert len(manifest["spec"]["containers"]) == 1
            expected_pool = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"} if gpus else {"herd.dev/pool": "cpu"}
            assert manifest["spec"]["nodeSelector"] == expected_pool
            limits = base["resources"]["limits"]
            assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)  # exactly what the stage declares
            env = {e["name"]: e.get("value") for e in base["env"]}
            assert env.get("HERD_NPROC_PER_NODE") == (str(spec.resources.workers) if gpus else None)
            assert (task.pool, task.pool_slots) == ((f"herd-gpu-{spec.name}", gpus) if gpus else ("default_pool", 1))
            assert task.execution_timeout == spec.timeout
            shm = next(v for v in manifest["spec"]["volumes"] if v["name"] == "dshm")
            assert shm["emptyDir"]["medium"] == "Memory"
        # No secret value is in the pod: credentials come from the Secret by reference only.
        assert "AWS_SECRET_ACCESS_KEY" not in str(manifest)


def test_gpu_stages_ask_for_the_gpus_they_use():
    by_name = {spec.name: spec.resources for spec in STAGES_BY_ID.values()}
    assert by_name["pretrain"].gpus == by_name["pretrain"].workers == 8  # data-parallel: a worker per GPU
    assert {name: by_name[name].gpus for name in ("midtrain", "sft", "dpo", "codistill", "safety")} == dict.fromkeys(
        ("midtrain", "sft", "dpo", "codistill", "safety"), 1)
    assert (by_name["rl"].gpus, by_name["rl"].workers) == (2, 1)  # the trainer and its sampler, one process


def test_single_gpu_pods_carry_the_kueue_queue_and_wait_in_it(monkeypatch):
    dag = _kubernetes_dag(monkeypatch, HERD_K8S_QUEUE="h100-training", HERD_K8S_GPU_DEVICES='{"rdma/ib": "1"}',
                          HERD_K8S_NCCL_ENV='{"NCCL_IB_HCA": "mlx5_0,mlx5_1", "NCCL_SOCKET_IFNAME": "eth0"}')
    sft, tokenizer = dag.get_task("scout.sft"), dag.get_task("tokenizer")
    pod = _render(sft)
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100-training"
    assert "kueue.x-k8s.io/queue-name" not in _render(tokenizer)["metadata"]["labels"]  # CPU pods bypass the queue
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"memory": "120Gi", "nvidia.com/gpu": "1", "rdma/ib": "1"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NCCL_IB_HCA"] == "mlx5_0,mlx5_1" and env["NCCL_SOCKET_IFNAME"] == "eth0"
    # Pending while Kueue holds it is not a failure: it may wait as long as the task may run.
    assert sft.startup_timeout_seconds == int(STAGES_BY_ID["scout.sft"].timeout.total_seconds())
    assert tokenizer.startup_timeout_seconds == 900 and sft.deferrable


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
    with pytest.raises(ConfigError, match="HERD_K8S_NCCL_ENV is not a JSON object"):
        backend_settings({"HERD_K8S_NCCL_ENV": "NCCL_IB_HCA=mlx5"})


def test_a_stage_asking_more_gpus_than_a_node_has_is_refused():
    from herd.config import ConfigError
    from herd_airflow.factory import command_task

    settings = backend_settings({"HERD_BACKEND": "kubernetes", "HERD_K8S_GPUS_PER_NODE": "4"})
    with pytest.raises(ConfigError, match="asks for 8 GPUs per pod; a node of this cluster has 4"):
        command_task("pretrain", ["stage", "pretrain"], Resources(gpus=8), settings=settings)


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
