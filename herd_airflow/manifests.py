"""What the Kubernetes backend creates: a stage's pod, or a gang's indexed Job and headless Service.

Every ``k8s.V1...`` literal of the project lives here; the operators that submit them are
in :mod:`herd_airflow.kubernetes` (one pod) and :mod:`herd_airflow.gang` (a gang). Pods meet
the restricted Pod Security Standard: non-root, read-only root filesystem, no privilege
escalation, all capabilities dropped, the runtime's seccomp profile. Writable space is
``/tmp`` and ``/dev/shm`` (memory-backed, sized by the stage, for data loaders and NCCL).

A stage that spans more than one node (``Resources.nodes``, or ``HERD_K8S_STAGE_NODES``
for this cluster) becomes a gang: an indexed Job, one pod per node, plus a headless
Service that gives pod 0 a stable DNS name for the torch rendezvous. Each pod runs
``herd launch``, which starts one worker per GPU (``tasks/runtime/launch.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kubernetes.client import models as k8s

from herd.deploy import KubernetesSettings
from herd.stage import Resources

GPU_RESOURCE = "nvidia.com/gpu"
STAGE_CONTAINER = "stage"
GANG_LABEL = "herd.dev/gang"
# Set by the Job controller on every pod of an indexed Job (label since Kubernetes 1.28).
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
FINISHED_JOB_TTL_SECONDS = 24 * 3600


def effective_resources(stage_name: str, resources: Resources, settings: KubernetesSettings) -> Resources:
    """The stage's resources on this cluster: a GPU stage takes the pool's node shape and node count."""
    changes: dict[str, Any] = {}
    if resources.gpus and settings.gpus_per_node:
        changes["gpus"] = settings.gpus_per_node
    if resources.gpus and settings.gpu_shm:
        changes["shm"] = settings.gpu_shm
    if stage_name in settings.stage_nodes:
        changes["nodes"] = settings.stage_nodes[stage_name]
    return dataclasses.replace(resources, **changes)


def _container_security(settings: KubernetesSettings) -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=settings.run_as_user,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def _pod_security(settings: KubernetesSettings) -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=settings.run_as_user,
        run_as_group=settings.run_as_user,
        fs_group=settings.run_as_user,
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


def _tolerations(resources: Resources, settings: KubernetesSettings) -> list[k8s.V1Toleration]:
    if not resources.gpus:
        return []
    return [
        k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                         toleration_seconds=t.toleration_seconds)
        for t in settings.gpu_tolerations
    ]


def _node_selector(resources: Resources, settings: KubernetesSettings) -> dict[str, str]:
    return dict(settings.gpu_pool if resources.gpus else settings.cpu_pool)


def _env(resources: Resources) -> list[k8s.V1EnvVar]:
    return [
        k8s.V1EnvVar(name="HERD_HOME", value="/tmp/herd"),
        k8s.V1EnvVar(name="HOME", value="/tmp"),
        k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp/matplotlib"),
        # What the stage's step record counts as GPU-hours (pods x GPUs x wall).
        k8s.V1EnvVar(name="HERD_GPUS_PER_POD", value=str(resources.gpus)),
    ]


def _env_from(settings: KubernetesSettings) -> list[k8s.V1EnvFromSource]:
    return [
        k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=settings.env_config_map)),
        k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.env_secret)),
    ]


def pod_fields(task_id: str, resources: Resources, settings: KubernetesSettings) -> dict[str, Any]:
    """The pod of a one-node stage, as the pod operator's keyword arguments (``resources`` as on this cluster)."""
    volumes, mounts = _volumes(resources)
    return {
        "name": f"herd-{task_id}",
        "namespace": settings.namespace,
        "image": settings.image,
        "image_pull_policy": settings.image_pull_policy,
        "cmds": ["herd"],
        "labels": {"app.kubernetes.io/name": "herd", "app.kubernetes.io/component": "stage", "herd.dev/stage": task_id},
        "env_vars": _env(resources),
        "env_from": _env_from(settings),
        "container_resources": _resources(resources),
        "node_selector": _node_selector(resources, settings),
        "tolerations": _tolerations(resources, settings),
        "volumes": volumes,
        "volume_mounts": mounts,
        "service_account_name": settings.service_account,
        "automount_service_account_token": False,
        "priority_class_name": settings.priority_class,
        "security_context": _pod_security(settings),
        "container_security_context": _container_security(settings),
    }


def gang_labels(gang: str, stage: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "herd", "app.kubernetes.io/component": "gang",
            "herd.dev/stage": stage, GANG_LABEL: gang}


def gang_service(gang: str, stage: str, settings: KubernetesSettings) -> k8s.V1Service:
    """The headless Service whose name is every gang pod's DNS subdomain."""
    return k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=k8s.V1ObjectMeta(name=gang, namespace=settings.namespace, labels=gang_labels(gang, stage)),
        spec=k8s.V1ServiceSpec(
            cluster_ip="None",
            # Rank 0 must resolve before any pod is Ready: there are no readiness probes to wait on.
            publish_not_ready_addresses=True,
            selector={GANG_LABEL: gang},
            ports=[k8s.V1ServicePort(name="rendezvous", port=settings.rendezvous_port,
                                     target_port=settings.rendezvous_port, protocol="TCP")],
        ),
    )


def gang_job(gang: str, job_name: str, stage: str, arguments: list[str], resources: Resources,
             settings: KubernetesSettings, module: str = "tasks.cli") -> k8s.V1Job:
    """One attempt of the gang: an indexed Job of ``resources.nodes`` pods, one per node of one pool.

    ``backoffLimit: 0``: the first pod to fail fails the Job, and the Job controller stops the
    others. A Job-level retry would replace only the failed index, which cannot rejoin a static
    rendezvous; the gang operator instead starts a new Job, and the stage resumes from its last
    checkpoint.
    """
    nodes = resources.nodes
    labels = gang_labels(gang, stage)
    volumes, mounts = _volumes(resources)
    launch = ["launch"] + (["--module", module] if module != "tasks.cli" else []) + ["--", *arguments]
    env = _env(resources) + [
        k8s.V1EnvVar(name="HERD_NNODES", value=str(nodes)),
        k8s.V1EnvVar(name="HERD_NPROC_PER_NODE", value=str(resources.gpus or 1)),
        # Pod 0's stable name: <hostname>.<subdomain>, both set by the indexed Job below.
        k8s.V1EnvVar(name="MASTER_ADDR", value=f"{job_name}-0.{gang}"),
        k8s.V1EnvVar(name="MASTER_PORT", value=str(settings.rendezvous_port)),
    ]
    container = k8s.V1Container(
        name=STAGE_CONTAINER,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        command=["herd"],
        args=launch,
        env=env,
        env_from=_env_from(settings),
        ports=[k8s.V1ContainerPort(name="rendezvous", container_port=settings.rendezvous_port, protocol="TCP")],
        resources=_resources(resources),
        security_context=_container_security(settings),
        volume_mounts=mounts,
    )
    this_job = k8s.V1LabelSelector(match_labels={JOB_NAME_LABEL: job_name})
    one_per_node = k8s.V1PodAntiAffinity(required_during_scheduling_ignored_during_execution=[
        k8s.V1PodAffinityTerm(label_selector=this_job, topology_key="kubernetes.io/hostname"),
    ])
    # Where several pools carry the same GPU label, pin the gang to one of them (the first pod
    # may land anywhere: a term that matches the pod itself is satisfied by the pod alone).
    together = k8s.V1PodAffinity(required_during_scheduling_ignored_during_execution=[
        k8s.V1PodAffinityTerm(label_selector=this_job, topology_key=settings.gang_topology_key),
    ]) if settings.gang_topology_key else None
    pod = k8s.V1PodSpec(
        restart_policy="Never",
        subdomain=gang,
        containers=[container],
        volumes=volumes,
        node_selector=_node_selector(resources, settings),
        tolerations=_tolerations(resources, settings) or None,
        affinity=k8s.V1Affinity(pod_anti_affinity=one_per_node, pod_affinity=together),
        service_account_name=settings.service_account,
        automount_service_account_token=False,
        priority_class_name=settings.priority_class,
        security_context=_pod_security(settings),
    )
    job_labels = dict(labels)
    if settings.queue_name:
        # Kueue admits the whole Job or none of it, so a half-scheduled gang never holds GPUs.
        job_labels["kueue.x-k8s.io/queue-name"] = settings.queue_name
    return k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=job_name, namespace=settings.namespace, labels=job_labels),
        spec=k8s.V1JobSpec(
            completion_mode="Indexed",
            completions=nodes,
            parallelism=nodes,
            backoff_limit=0,
            ttl_seconds_after_finished=FINISHED_JOB_TTL_SECONDS,
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )
