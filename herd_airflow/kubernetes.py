"""The Kubernetes backend's one-pod operator: a stage in a pod on the node pool its resources ask for.

The pod itself comes from :mod:`herd_airflow.manifests`; a stage that spans nodes runs as a
gang instead (:mod:`herd_airflow.gang`), which the factory decides.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from herd.deploy import KubernetesSettings
from herd.stage import SKIP_EXIT, Resources
from herd_airflow.manifests import pod_fields

XCOM_FILE = "/airflow/xcom/return.json"


def pod_operator(task_id: str, arguments: list[str], resources: Resources, settings: KubernetesSettings,
                 returns_output: bool, **operator_kwargs: Any) -> KubernetesPodOperator:
    """A KubernetesPodOperator for one pod; ``resources`` as on this cluster (``effective_resources``)."""
    return KubernetesPodOperator(
        task_id=task_id,
        arguments=arguments + (["--xcom-file", XCOM_FILE] if returns_output else []),
        **pod_operator_fields(task_id, resources, settings, returns_output),
        **operator_kwargs,
    )


def pod_operator_fields(task_id: str, resources: Resources, settings: KubernetesSettings,
                        returns_output: bool) -> dict[str, Any]:
    """Every keyword of a stage's pod operator but its arguments (a mapped task expands those)."""
    return dict(
        **pod_fields(task_id, resources, settings),
        do_xcom_push=returns_output,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        skip_on_exit_code=SKIP_EXIT,
        startup_timeout_seconds=settings.startup_timeout_seconds,
        kubernetes_conn_id=settings.kubernetes_conn_id,
    )
