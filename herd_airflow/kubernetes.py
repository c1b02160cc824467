"""The Kubernetes backend's one-pod operator: a stage in a pod on the node pool its resources ask for.

The pod itself comes from :mod:`herd_airflow.manifests`; a stage that spans nodes runs as a
gang instead (:mod:`herd_airflow.gang`), which the factory decides.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from herd.deploy import KubernetesSettings
from herd.stage import SKIP_EXIT, Resources
from herd_airflow.manifests import pod_fields, queue_labels, stage_command

XCOM_FILE = "/airflow/xcom/return.json"


def pod_operator(task_id: str, arguments: list[str], resources: Resources, settings: KubernetesSettings,
                 returns_output: bool, **operator_kwargs: Any) -> KubernetesPodOperator:
    """A KubernetesPodOperator for one pod; ``resources`` as on this cluster (``effective_resources``).

    Deferrable: a pod that waits (for a node, or in Kueue's queue) holds no worker slot. A pod
    Kueue holds back is Pending until admitted, which is not a failure: its startup timeout is
    the task's whole execution timeout.
    """
    startup = settings.startup_timeout_seconds
    timeout = operator_kwargs.get("execution_timeout")
    if queue_labels(resources, settings) and isinstance(timeout, timedelta):
        startup = max(startup, int(timeout.total_seconds()))
    return KubernetesPodOperator(
        task_id=task_id,
        arguments=stage_command(arguments + (["--xcom-file", XCOM_FILE] if returns_output else []), resources),
        **pod_fields(task_id, resources, settings),
        do_xcom_push=returns_output,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        skip_on_exit_code=SKIP_EXIT,
        startup_timeout_seconds=startup,
        kubernetes_conn_id=settings.kubernetes_conn_id,
        deferrable=settings.deferrable,
        **operator_kwargs,
    )
