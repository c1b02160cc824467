"""What the Kubernetes backend creates: a stage's pod, or a gang's JobSet.

Every Kubernetes object of the project is written here; the operators that submit them are
in :mod:`herd_airflow.kubernetes` (one pod) and :mod:`herd_airflow.gang` (a gang). Pods meet
the restricted Pod Security Standard: non-root, read-only root filesystem, no privilege
escalation, all capabilities dropped, the runtime's seccomp profile. Writable space is
``/tmp`` and ``/dev/shm`` (memory-backed, sized by the stage, for data loaders and NCCL).

A pod asks for exactly the GPUs its stage declares, plus the cluster's extra devices
(RDMA, EFA) with their NCCL settings, and carries Kueue's queue label so that admission and
quota are Kueue's. A GPU pod runs ``herd launch``, which starts one worker per GPU
(``tasks/runtime/launch.py``). A stage that spans more than one node (``Resources.nodes``, or
``HERD_K8S_STAGE_NODES`` for this cluster) becomes a gang: a JobSet (jobset.x-k8s.io) of one
indexed Job, one pod per node, whose headless Service gives pod 0 a stable DNS name for the
torch rendezvous, and whose failure policy restarts the whole gang.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from herd.config import ConfigError
from herd.deploy import KubernetesSettings
from herd.stage import BAD_INPUT_EXIT, SKIP_EXIT, Resources

GPU_RESOURCE = "nvidia.com/gpu"
STAGE_CONTAINER = "stage"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Which task a gang belongs to across its tries (its name also carries the try).
TASK_LABEL = "herd.dev/task"
JOBSET_API = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"
# Set by the Job controller on every pod of an indexed Job (label since Kubernetes 1.28).
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
REPLICATED_JOB = "node"
# The messages the Job controller gives a Job failed by its pod failure policy
# (pkg/controller/job/pod_failure_policy.go), which the JobSet's rules tell apart.
REFUSED_MESSAGE = f"failed with exit code ({BAD_INPUT_EXIT}|{SKIP_EXIT}) matching FailJob rule"
PREEMPTED_MESSAGE = "has condition DisruptionTarget matching FailJob rule"


def effective_resources(stage_name: str, resources: Resources, settings: KubernetesSettings) -> Resources:
    """The stage's resources on this cluster: its own ask, on as many nodes as the cluster says."""
    if settings.gpus_per_node and resources.gpus > settings.gpus_per_node:
        raise ConfigError(f"stage {stage_name} asks for {resources.gpus} GPUs per pod; a node of this cluster "
                          f"has {settings.gpus_per_node}")
    if stage_name in settings.stage_nodes:
        return dataclasses.replace(resources, nodes=settings.stage_nodes[stage_name])
    return resources


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


def _resources(resources: Resources, settings: KubernetesSettings) -> k8s.V1ResourceRequirements:
    requests: dict[str, str] = {"cpu": resources.cpu, "memory": resources.memory}
    limits: dict[str, str] = {"memory": resources.memory}
    if resources.gpus:
        # Extended resources (GPUs, RDMA, EFA) are asked for as equal requests and limits.
        devices = {GPU_RESOURCE: str(resources.gpus), **settings.gpu_devices}
        requests.update(devices)
        limits.update(devices)
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


def _env(resources: Resources, settings: KubernetesSettings) -> list[k8s.V1EnvVar]:
    env = [
        k8s.V1EnvVar(name="HERD_HOME", value="/tmp/herd"),
        k8s.V1EnvVar(name="HOME", value="/tmp"),
        k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp/matplotlib"),
        # What the stage's step record counts as GPU-hours (pods x GPUs x wall).
        k8s.V1EnvVar(name="HERD_GPUS_PER_POD", value=str(resources.gpus)),
    ]
    if resources.gpus:
        env.append(k8s.V1EnvVar(name="HERD_NPROC_PER_NODE", value=str(resources.workers)))
        env += [k8s.V1EnvVar(name=name, value=value) for name, value in sorted(settings.nccl_env.items())]
    return env


def _env_from(settings: KubernetesSettings) -> list[k8s.V1EnvFromSource]:
    return [
        k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=settings.env_config_map)),
        k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.env_secret)),
    ]


def stage_command(arguments: list[str], resources: Resources, module: str = "tasks.cli") -> list[str]:
    """The ``herd`` arguments of a stage's pod: a GPU pod (or a gang's) runs ``herd launch``, one worker per GPU."""
    if not resources.gpus and resources.nodes == 1:
        return list(arguments)
    return ["launch"] + (["--module", module] if module != "tasks.cli" else []) + ["--", *arguments]


def queue_labels(resources: Resources, settings: KubernetesSettings) -> dict[str, str]:
    """Kueue's queue label for a GPU pod or any gang: Kueue admits it (a gang all at once) within the queue's quota."""
    queued = resources.gpus or resources.nodes > 1
    return {QUEUE_LABEL: settings.queue_name} if queued and settings.queue_name else {}


def pod_fields(task_id: str, resources: Resources, settings: KubernetesSettings) -> dict[str, Any]:
    """The pod of a one-node stage, as the pod operator's keyword arguments (``resources`` as on this cluster)."""
    volumes, mounts = _volumes(resources)
    return {
        "name": f"herd-{task_id}",
        "namespace": settings.namespace,
        "image": settings.image,
        "image_pull_policy": settings.image_pull_policy,
        "cmds": ["herd"],
        "labels": {"app.kubernetes.io/name": "herd", "app.kubernetes.io/component": "stage", "herd.dev/stage": task_id,
                   **queue_labels(resources, settings)},
        "env_vars": _env(resources, settings),
        "env_from": _env_from(settings),
        "container_resources": _resources(resources, settings),
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


def gang_labels(stage: str, task_key: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "herd", "app.kubernetes.io/component": "gang",
            "herd.dev/stage": stage, TASK_LABEL: task_key}


def _pod_failure_policy() -> k8s.V1PodFailurePolicy:
    """Ends the Job at once when retrying cannot help, or when a pod was preempted, so the JobSet's rules decide."""
    return k8s.V1PodFailurePolicy(rules=[
        k8s.V1PodFailurePolicyRule(action="FailJob", on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
            container_name=STAGE_CONTAINER, operator="In", values=[BAD_INPUT_EXIT, SKIP_EXIT])),
        k8s.V1PodFailurePolicyRule(action="FailJob", on_pod_conditions=[
            k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")]),
    ])


def _failure_policy(settings: KubernetesSettings) -> dict[str, Any]:
    """Whole-gang restarts: a preemption restarts without counting, a refusal never restarts, the rest count."""
    return {
        "maxRestarts": settings.gang_restarts,
        "rules": [
            {"name": "refused", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"],
             "onJobFailureMessagePatterns": [REFUSED_MESSAGE]},
            {"name": "preempted", "action": "RestartJobSetAndIgnoreMaxRestarts",
             "onJobFailureReasons": ["PodFailurePolicy"], "onJobFailureMessagePatterns": [PREEMPTED_MESSAGE]},
        ],
    }


def rank0_address(gang: str) -> str:
    """Pod 0's stable DNS name: JobSet names pods ``<jobset>-<replicated job>-<job index>-<pod index>``."""
    return f"{gang}-{REPLICATED_JOB}-0-0.{gang}"


def gang_jobset(gang: str, task_key: str, stage: str, arguments: list[str], resources: Resources,
                settings: KubernetesSettings, module: str = "tasks.cli") -> dict[str, Any]:
    """The gang: a JobSet of one indexed Job with ``resources.nodes`` pods, one per node of one pool.

    ``backoffLimit: 0``: the first pod to fail fails the Job. A Job-level retry would replace
    only the failed index, which cannot rejoin a static rendezvous; the JobSet instead
    recreates the whole gang (``failurePolicy``), and the stage resumes from its last checkpoint.
    """
    nodes = resources.nodes
    labels = gang_labels(stage, task_key)
    volumes, mounts = _volumes(resources)
    env = _env(resources, settings) + [
        k8s.V1EnvVar(name="HERD_NNODES", value=str(nodes)),
        k8s.V1EnvVar(name="MASTER_ADDR", value=rank0_address(gang)),
        k8s.V1EnvVar(name="MASTER_PORT", value=str(settings.rendezvous_port)),
    ]
    if not resources.gpus:
        env.append(k8s.V1EnvVar(name="HERD_NPROC_PER_NODE", value="1"))
    container = k8s.V1Container(
        name=STAGE_CONTAINER,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        command=["herd"],
        args=stage_command(arguments, resources, module),
        env=env,
        env_from=_env_from(settings),
        ports=[k8s.V1ContainerPort(name="rendezvous", container_port=settings.rendezvous_port, protocol="TCP")],
        resources=_resources(resources, settings),
        security_context=_container_security(settings),
        volume_mounts=mounts,
    )
    this_gang = k8s.V1LabelSelector(match_labels={JOBSET_NAME_LABEL: gang})
    one_per_node = k8s.V1PodAntiAffinity(required_during_scheduling_ignored_during_execution=[
        k8s.V1PodAffinityTerm(label_selector=this_gang, topology_key="kubernetes.io/hostname"),
    ])
    # Where several pools carry the same GPU label, pin the gang to one of them (the first pod
    # may land anywhere: a term that matches the pod itself is satisfied by the pod alone).
    together = k8s.V1PodAffinity(required_during_scheduling_ignored_during_execution=[
        k8s.V1PodAffinityTerm(label_selector=this_gang, topology_key=settings.gang_topology_key),
    ]) if settings.gang_topology_key else None
    pod = k8s.V1PodSpec(
        restart_policy="Never",
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
    job = k8s.V1JobTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels),
        spec=k8s.V1JobSpec(
            completion_mode="Indexed",
            completions=nodes,
            parallelism=nodes,
            backoff_limit=0,
            pod_failure_policy=_pod_failure_policy(),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )
    return {
        "apiVersion": f"{JOBSET_API[0]}/{JOBSET_API[1]}",
        "kind": "JobSet",
        "metadata": {"name": gang, "namespace": settings.namespace, "labels": {**labels,
                                                                                **queue_labels(resources, settings)}},
        "spec": {
            # Rank 0 must resolve before any pod is Ready: there are no readiness probes to wait on.
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "failurePolicy": _failure_policy(settings),
            "successPolicy": {"operator": "All"},
            # A safety net: the operator deletes a finished gang once it has read its pods' logs.
            "ttlSecondsAfterFinished": settings.gang_ttl_seconds,
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1,
                                "template": ApiClient().sanitize_for_serialization(job)}],
        },
    }
