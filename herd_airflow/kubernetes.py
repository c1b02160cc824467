"""The Kubernetes backend: one stage, one pod, on the node pool its resources ask for.

Every ``k8s.V1...`` literal of the project lives here. Pods meet the restricted Pod
Security Standard: non-root, read-only root filesystem, no privilege escalation, all
capabilities dropped, the runtime's seccomp profile. Writable space is ``/tmp`` and
``/dev/shm`` (memory-backed, sized by the stage, for data loaders and NCCL).
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import models as k8s
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from herd.deploy import KubernetesSettings
from herd.stage import Resources

XCOM_FILE = "/airflow/xcom/return.json"
GPU_RESOURCE = "nvidia.com/gpu"


def _container_security(settings: KubernetesSettings) -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=settings.run_as_user,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _volumes(resources: Resources) -> tuple[list[k8s.V1Volume], list[k8s.V1VolumeMount]]:
    volumes = [
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource()),
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=resources.shm)),
    ]
    mounts = [
        k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    return volumes, mounts


def _resources(resources: Resources) -> k8s.V1ResourceRequirements:
    requests: dict[str, str] = {"cpu": resources.cpu, "memory": resources.memory}
    limits: dict[str, str] = {"memory": resources.memory}
    if resources.gpus:
        requests[GPU_RESOURCE] = str(resources.gpus)
        limits[GPU_RESOURCE] = str(resources.gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def pod_operator(
    task_id: str,
    arguments: list[str],
    resources: Resources,
    settings: KubernetesSettings,
    returns_output: bool,
    **operator_kwargs: Any,
) -> KubernetesPodOperator:
    if resources.nodes > 1:
        raise ValueError(f"{task_id} asks for {resources.nodes} nodes; a single pod cannot span nodes")
    volumes, mounts = _volumes(resources)
    tolerations = []
    if resources.gpus:
        tolerations.append(k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"))
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"herd-{task_id}",
        namespace=settings.namespace,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        cmds=["herd"],
        arguments=arguments + (["--xcom-file", XCOM_FILE] if returns_output else []),
        labels={"app.kubernetes.io/name": "herd", "app.kubernetes.io/component": "stage", "herd.dev/stage": task_id},
        env_vars=[
            k8s.V1EnvVar(name="HERD_HOME", value="/tmp/herd"),
            k8s.V1EnvVar(name="HOME", value="/tmp"),
            k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp/matplotlib"),
        ],
        env_from=[
            k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=settings.env_config_map)),
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.env_secret)),
        ],
        container_resources=_resources(resources),
        node_selector=settings.gpu_pool if resources.gpus else settings.cpu_pool,
        tolerations=tolerations,
        volumes=volumes,
        volume_mounts=mounts,
        service_account_name=settings.service_account,
        automount_service_account_token=False,
        priority_class_name=settings.priority_class,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=settings.run_as_user,
            run_as_group=settings.run_as_user,
            fs_group=settings.run_as_user,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        container_security_context=_container_security(settings),
        xcom_sidecar_container_security_context=_container_security(settings),
        do_xcom_push=returns_output,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        startup_timeout_seconds=settings.startup_timeout_seconds,
        kubernetes_conn_id=settings.kubernetes_conn_id,
        **operator_kwargs,
    )
