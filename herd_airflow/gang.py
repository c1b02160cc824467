"""The gang operator: one stage on several nodes, as an indexed Job plus a headless Service.

It submits the gang (manifests from :mod:`herd_airflow.manifests`), follows every pod's log
into the task log with a ``[node N]`` prefix, and waits for the Job to finish. When a pod
fails, the Job fails as a whole (``backoffLimit: 0``) and this operator starts the whole gang
again as a new Job, up to ``gang_restarts`` times; the stage resumes from its last checkpoint
(pretrain is resumable), so a lost node costs the steps since that checkpoint. A pod that
exits 2 refused its config or input: that fails the task at once, without restarts. The
output URI is read from pod 0's log (the stage contract's last line), like the local backend.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from herd.deploy import KubernetesSettings
from herd.stage import BAD_INPUT_EXIT, OUTPUT_LINE_PREFIX, SKIP_EXIT, Resources
from herd_airflow.manifests import GANG_LABEL, INDEX_LABEL, JOB_NAME_LABEL, STAGE_CONTAINER, gang_job, gang_service


def gang_name(task_id: str, run_id: str) -> str:
    """A DNS label unique to (task, DAG run), short enough for ``<name>-t<try>a<attempt>-<index>`` hostnames."""
    digest = hashlib.sha256(f"{run_id}\0{task_id}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", task_id.lower()).strip("-")[:24].strip("-")
    return f"herd-{slug}-{digest}"


def _stamp_key(stamp: str) -> str:
    """RFC 3339 timestamps as Kubernetes writes them (fractions trimmed) in an order that compares as text."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction:0<9}"


@dataclass
class LogTail:
    """New lines of a pod log read again and again with ``timestamps=True`` (each read overlaps the last)."""

    last: str = ""
    seen_at_last: set[str] = field(default_factory=set)

    def new_lines(self, text: str) -> list[str]:
        lines = []
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            key = _stamp_key(stamp)
            if key < self.last or (key == self.last and raw in self.seen_at_last):
                continue
            if key > self.last:
                self.last, self.seen_at_last = key, set()
            self.seen_at_last.add(raw)
            lines.append(line)
        return lines


@dataclass
class PodFailure:
    index: int
    pod: str
    exit_code: int | None
    reason: str

    def __str__(self) -> str:
        return f"node {self.index} ({self.pod}): exit {self.exit_code}, {self.reason}"


def _index(pod: Any) -> int:
    labels = pod.metadata.labels or {}
    annotations = pod.metadata.annotations or {}
    return int(labels.get(INDEX_LABEL, annotations.get(INDEX_LABEL, "0")))


def _failure(pod: Any) -> PodFailure | None:
    if pod.status.phase != "Failed":
        return None
    for status in pod.status.container_statuses or []:
        terminated = status.state.terminated if status.state else None
        if status.name == STAGE_CONTAINER and terminated:
            return PodFailure(_index(pod), pod.metadata.name, terminated.exit_code, terminated.reason or "Error")
    return PodFailure(_index(pod), pod.metadata.name, None, pod.status.reason or "Failed")


def _finished(job: Any) -> Any | None:
    """The Job's terminal condition (Complete or Failed), if it has one."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition
    return None


class GangJobOperator(BaseOperator):
    """Runs a herd command on ``resources.nodes`` pods at once and restarts the whole gang on a failure."""

    template_fields = ("arguments",)
    ui_color = "#fde8d8"

    def __init__(self, *, arguments: list[str], stage_resources: Resources, settings: KubernetesSettings,
                 module: str = "tasks.cli", poll_seconds: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arguments = arguments
        self.stage_resources = stage_resources
        self.settings = settings
        self.module = module
        self.poll_seconds = poll_seconds
        self._current: tuple[str, str] | None = None  # (job, service) to delete if the task is killed

    def _clients(self) -> tuple[Any, Any]:
        """CoreV1Api and BatchV1Api for the configured connection (in-cluster when it has none)."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        hook = KubernetesHook(conn_id=self.settings.kubernetes_conn_id)
        return hook.core_v1_client, hook.batch_v1_client

    def execute(self, context: Any) -> str | None:
        core, batch = self._clients()
        namespace = self.settings.namespace
        gang = gang_name(self.task_id, context["run_id"])
        stage = self.task_id.rsplit(".", 1)[-1]
        try_number = context["ti"].try_number
        self._delete_jobs(batch, f"{GANG_LABEL}={gang}")  # a previous try's gang, if any, must not linger
        service = gang_service(gang, stage, self.settings)
        self._create_service(core, service)
        attempts = self.settings.gang_restarts + 1
        try:
            for attempt in range(1, attempts + 1):
                job_name = f"{gang}-t{try_number}a{attempt}"
                job = gang_job(gang, job_name, stage, list(self.arguments), self.stage_resources, self.settings,
                               self.module)
                self.log.info("gang %s attempt %d/%d: %d nodes x %d workers, job %s", gang, attempt, attempts,
                              self.stage_resources.nodes, self.stage_resources.gpus or 1, job_name)
                batch.create_namespaced_job(namespace=namespace, body=job)
                self._current = (job_name, gang)
                succeeded, output, failures = self._wait(core, batch, job_name)
                if succeeded:
                    batch.delete_namespaced_job(job_name, namespace, propagation_policy="Background")
                    return output
                exit_codes = {f.exit_code for f in failures if isinstance(f, PodFailure)}
                if SKIP_EXIT in exit_codes:
                    batch.delete_namespaced_job(job_name, namespace, propagation_policy="Background")
                    raise AirflowSkipException(f"{self.task_id}: not selected, nothing cached, and no selected "
                                               "stage needs it")
                if BAD_INPUT_EXIT in exit_codes:
                    raise AirflowFailException(f"{self.task_id}: refused its config or input: "
                                               + "; ".join(map(str, failures)))
                summary = "; ".join(map(str, failures))
                if attempt < attempts:
                    self.log.warning("gang %s attempt %d failed (%s): restarting the whole gang from the last "
                                     "checkpoint", gang, attempt, summary)
                    batch.delete_namespaced_job(job_name, namespace, propagation_policy="Background")
                    continue
                raise RuntimeError(f"{self.task_id}: gang failed {attempts} times; last: {summary}")
        finally:
            self._delete_service(core, gang)
            self._current = None
        return None

    def _wait(self, core: Any, batch: Any, job_name: str) -> tuple[bool, str | None, list[PodFailure | str]]:
        """Follows the Job to its end: (succeeded, output URI, what failed: pods, or the Job's own reason)."""
        namespace = self.settings.namespace
        tails: dict[str, LogTail] = {}
        output: str | None = None
        started = time.monotonic()
        last_read: float | None = None
        while True:
            job = batch.read_namespaced_job_status(job_name, namespace)
            state = _finished(job)
            pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={job_name}").items
            # Overlapping windows: LogTail drops what was already shown.
            since = None if last_read is None else int(time.monotonic() - last_read + self.poll_seconds) + 5
            last_read = time.monotonic()
            for pod in sorted(pods, key=_index):
                if pod.status.phase == "Pending":
                    continue
                for line in self._read_log(core, pod.metadata.name, since, tails):
                    self.log.info("[node %d] %s", _index(pod), line)
                    if _index(pod) == 0 and line.startswith(OUTPUT_LINE_PREFIX):
                        output = line[len(OUTPUT_LINE_PREFIX):]
            if state:
                failures: list[PodFailure | str] = [f for f in map(_failure, pods) if f]
                if state.type == "Failed" and not failures:  # e.g. pods evicted and gone
                    failures = [f"the Job failed: {state.reason or ''} {state.message or ''}".strip()]
                return state.type == "Complete", output, failures
            scheduled, nodes = sum(pod.status.phase != "Pending" for pod in pods), self.stage_resources.nodes
            waited = time.monotonic() - started
            if scheduled < nodes and waited > self.settings.startup_timeout_seconds:
                # Half a gang holds GPUs and trains nothing: give them back rather than wait on.
                batch.delete_namespaced_job(job_name, namespace, propagation_policy="Background")
                raise RuntimeError(f"{self.task_id}: only {scheduled} of {nodes} gang pods were scheduled within "
                                   f"{self.settings.startup_timeout_seconds} s; is the pool "
                                   f"{self.settings.gpu_pool} big enough?")
            time.sleep(self.poll_seconds)

    def _read_log(self, core: Any, pod: str, since: int | None, tails: dict[str, LogTail]) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        kwargs: dict[str, Any] = {"container": STAGE_CONTAINER, "timestamps": True}
        if since is not None:
            kwargs["since_seconds"] = since
        try:
            text = core.read_namespaced_pod_log(pod, self.settings.namespace, **kwargs)
        except ApiException as err:  # the pod went away between the listing and the read
            self.log.debug("no log for %s yet: %s", pod, err.reason)
            return []
        return tails.setdefault(pod, LogTail()).new_lines(text)

    def _create_service(self, core: Any, service: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            core.create_namespaced_service(namespace=self.settings.namespace, body=service)
        except ApiException as err:
            if err.status != 409:  # left by a previous try: the same name and selector, so keep it
                raise

    def _delete_service(self, core: Any, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            core.delete_namespaced_service(name, self.settings.namespace)
        except ApiException as err:
            if err.status != 404:
                self.log.warning("could not delete service %s: %s", name, err.reason)

    def _delete_jobs(self, batch: Any, selector: str) -> None:
        for job in batch.list_namespaced_job(self.settings.namespace, label_selector=selector).items:
            self.log.info("deleting job %s left by an earlier try", job.metadata.name)
            batch.delete_namespaced_job(job.metadata.name, self.settings.namespace, propagation_policy="Background")

    def on_kill(self) -> None:
        if self._current:
            core, batch = self._clients()
            job_name, service = self._current
            batch.delete_namespaced_job(job_name, self.settings.namespace, propagation_policy="Background")
            self._delete_service(core, service)
