"""The Kubernetes backend's one-pod operator: a stage in a pod on the node pool its resources ask for.

The pod itself comes from :mod:`herd_airflow.manifests`; a stage that spans nodes runs as a
gang instead (:mod:`herd_airflow.gang`), which the factory decides.

The stage's output URI (the task's XCom) travels in the container's termination message, which
the kubelet copies into the pod's status: reading it needs only ``get`` on pods. The provider's
XCom sidecar would need ``pods/exec`` in the namespace, which herd's Role does not grant.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from herd.deploy import KubernetesSettings
from herd.stage import SKIP_EXIT, Resources
from herd_airflow.manifests import pod_fields, queue_labels, stage_command

# Kubernetes' default terminationMessagePath; the kubelet keeps at most 4 KiB of it.
TERMINATION_MESSAGE = "/dev/termination-log"


def termination_output(pod: Any, container: str) -> str | None:
    """The URI the stage wrote to its termination message (JSON), or None when it wrote none."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    for status in statuses:
        terminated = status.state.terminated if status.name == container and status.state else None
        if terminated is not None and terminated.message:
            return json.loads(terminated.message)
    return None


class StagePodOperator(KubernetesPodOperator):
    """A KubernetesPodOperator whose XCom is the stage's output URI, read from the pod's status."""

    def __init__(self, *, returns_output: bool, **kwargs: Any) -> None:
        super().__init__(do_xcom_push=False, **kwargs)
        self.returns_output = returns_output

    def execute(self, context: Any) -> str | None:
        super().execute(context)  # deferrable: raises TaskDeferred, and the task ends in trigger_reentry
        # The pod's last state, kept by the operator after it deleted the pod.
        return termination_output(self.remote_pod, self.base_container_name) if self.returns_output else None

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> str | None:
        super().trigger_reentry(context, event)
        # The completed pod as read back after the trigger fired (deleted since, when it succeeded).
        return termination_output(self.pod, self.base_container_name) if self.returns_output else None


def pod_operator(task_id: str, arguments: list[str], resources: Resources, settings: KubernetesSettings,
                 returns_output: bool, **operator_kwargs: Any) -> KubernetesPodOperator:
    """A KubernetesPodOperator for one pod; ``resources`` as on this cluster (``effective_resources``)."""
    return StagePodOperator(
        task_id=task_id,
        arguments=stage_command(arguments + (["--xcom-file", TERMINATION_MESSAGE] if returns_output else []),
                                resources),
        **pod_operator_fields(task_id, resources, settings, returns_output, operator_kwargs.get("execution_timeout")),
        **operator_kwargs,
    )


def pod_operator_fields(task_id: str, resources: Resources, settings: KubernetesSettings, returns_output: bool,
                        execution_timeout: Any = None) -> dict[str, Any]:
    """Every keyword of a stage's :class:`StagePodOperator` but its arguments (a mapped task expands those).

    Deferrable: a pod that waits (for a node, or in Kueue's queue) holds no worker slot. A pod
    Kueue holds back is Pending until admitted, which is not a failure: its startup timeout is
    the task's whole execution timeout.
    """
    startup = settings.startup_timeout_seconds
    if queue_labels(resources, settings) and isinstance(execution_timeout, timedelta):
        startup = max(startup, int(execution_timeout.total_seconds()))
    return dict(
        **pod_fields(task_id, resources, settings),
        returns_output=returns_output,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        skip_on_exit_code=SKIP_EXIT,
        startup_timeout_seconds=startup,
        kubernetes_conn_id=settings.kubernetes_conn_id,
        deferrable=settings.deferrable,
    )
