"""The gang operator: one stage on several nodes, as a JobSet, followed by a trigger (deferrable).

The operator creates the gang (:func:`herd_airflow.manifests.gang_jobset`) and defers to
:class:`GangTrigger`, which follows it from the triggerer, asynchronously, holding no worker
slot: it streams every pod's log into the task log with a ``[node N]`` prefix and fires when
the JobSet has finished. What the cluster's engines already do is left to them:

- Kueue admits the gang whole (the queue label on the JobSet). A JobSet Kueue keeps
  suspended is waiting in its queue, which is not a failure, however long it takes.
- A failed pod restarts the whole gang through the JobSet's own ``failurePolicy``
  (``maxRestarts``); the stage resumes from its last checkpoint. A preempted pod (condition
  ``DisruptionTarget``) restarts it without counting; a pod that exits 2 (refused its config or
  input) or 99 (not needed) ends it at once.

The gang's name comes from the DAG, run, task and try, and its ``herd.dev/task`` label from the
first three: a task resumed after its worker died finds the gang still running, from any try,
and follows it instead of starting another. The JobSet is deleted only after its pods' logs
were read (else its ``ttlSecondsAfterFinished`` removes it). The output URI is read from
pod 0's log (the stage contract's last line), like the local backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from herd.deploy import KubernetesSettings
from herd.stage import BAD_INPUT_EXIT, OUTPUT_LINE_PREFIX, SKIP_EXIT, Resources
from herd_airflow.manifests import (INDEX_LABEL, JOBSET_API, JOBSET_NAME_LABEL, RESTART_LABEL, STAGE_CONTAINER,
                                    TASK_LABEL, gang_jobset)

def task_key(dag_id: str, run_id: str, task_id: str) -> str:
    """What every try of one task in one DAG run shares: the gangs' ``herd.dev/task`` label."""
    return hashlib.sha256(f"{dag_id}\0{run_id}\0{task_id}".encode()).hexdigest()[:16]


def gang_name(dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    """A DNS label for one try, short enough for JobSet's ``<name>-node-0-<index>`` pod hostnames."""
    slug = re.sub(r"[^a-z0-9]+", "-", task_id.lower()).strip("-")[:20].strip("-")
    return f"herd-{slug}-{task_key(dag_id, run_id, task_id)[:8]}-t{try_number}"


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


def _labels(obj: Any) -> dict[str, str]:
    return obj.metadata.labels or {}


def _index(pod: Any) -> int:
    return int(_labels(pod).get(INDEX_LABEL, "0"))


def _attempt(pod: Any) -> int:
    return int(_labels(pod).get(RESTART_LABEL, "0"))


def _failure(pod: Any) -> dict[str, Any] | None:
    """A failed pod as the event carries it: node, pod, exit code and reason (``Preempted`` when disrupted)."""
    if pod.status.phase != "Failed":
        return None
    disrupted = any(c.type == "DisruptionTarget" and c.status == "True" for c in pod.status.conditions or [])
    for status in pod.status.container_statuses or []:
        terminated = status.state.terminated if status.state else None
        if status.name == STAGE_CONTAINER and terminated:
            return {"node": _index(pod), "pod": pod.metadata.name, "exit_code": terminated.exit_code,
                    "reason": "Preempted" if disrupted else terminated.reason or "Error"}
    return {"node": _index(pod), "pod": pod.metadata.name, "exit_code": None,
            "reason": "Preempted" if disrupted else pod.status.reason or "Failed"}


def _condition(jobset: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (jobset.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def finished(jobset: dict[str, Any]) -> str | None:
    """``Completed`` or ``Failed`` once the JobSet controller has decided; None while it runs or waits."""
    return next((kind for kind in ("Completed", "Failed") if _condition(jobset, kind)), None)


def suspended(jobset: dict[str, Any]) -> bool:
    """Held back (by Kueue, until it admits the gang whole): waiting in a queue, not failing."""
    return bool((jobset.get("spec") or {}).get("suspend")) or _condition(jobset, "Suspended") is not None


def describe(failures: list[dict[str, Any]]) -> str:
    return "; ".join(f"node {f['node']} ({f['pod']}): exit {f['exit_code']}, {f['reason']}" for f in failures)


def kubernetes_clients(conn_id: str) -> tuple[Any, Any]:
    """CoreV1Api and CustomObjectsApi for the configured connection (in-cluster when it has none)."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    hook = KubernetesHook(conn_id=conn_id)
    return hook.core_v1_client, hook.custom_object_client


class Clock:
    """Time as the trigger reads it; a test replaces it to wait hours in no time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class GangTrigger(BaseTrigger):
    """Follows one JobSet to its end from the triggerer: its state, its restarts, its pods' logs.

    The Kubernetes client is synchronous; each call runs in a thread so the triggerer's event
    loop never blocks. A JobSet Kueue keeps suspended waits with no deadline. Once admitted,
    a gang whose pods are not all scheduled within ``startup_timeout_seconds`` (half a gang holds
    GPUs and trains nothing) ends in a failure event.
    """

    clock = Clock()
    clients = staticmethod(kubernetes_clients)

    def __init__(self, *, name: str, namespace: str, nodes: int, conn_id: str, poll_seconds: float,
                 startup_timeout_seconds: int) -> None:
        super().__init__()
        self.name = name
        self.namespace = namespace
        self.nodes = nodes
        self.conn_id = conn_id
        self.poll_seconds = poll_seconds
        self.startup_timeout_seconds = startup_timeout_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"name": self.name, "namespace": self.namespace, "nodes": self.nodes, "conn_id": self.conn_id,
                 "poll_seconds": self.poll_seconds, "startup_timeout_seconds": self.startup_timeout_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            event = await self._follow()
        except Exception as err:  # the event carries it to the task, which fails with it in its log
            event = {"status": "Error", "message": f"{type(err).__name__}: {err}"}
        yield TriggerEvent({"name": self.name, **event})

    async def _follow(self) -> dict[str, Any]:
        core, custom = await asyncio.to_thread(self.clients, self.conn_id)
        tails: dict[str, LogTail] = {}
        output: str | None = None
        admitted_at: float | None = None
        waiting_logged = False
        restarts = 0
        last_read: float | None = None
        while True:
            jobset = await asyncio.to_thread(custom.get_namespaced_custom_object, *JOBSET_API[:2], self.namespace,
                                             JOBSET_API[2], self.name)
            state = finished(jobset)
            status = jobset.get("status") or {}
            if status.get("restarts", 0) > restarts:
                restarts = status["restarts"]
                admitted_at = None  # the new attempt's pods get their own time to be scheduled
                self.log.warning("gang %s: the JobSet restarted the whole gang (restart %d, %d counted against "
                                 "maxRestarts)", self.name, restarts, status.get("restartsCountTowardsMax", 0))
            if suspended(jobset) and not state:
                if not waiting_logged:
                    self.log.info("gang %s: suspended, waiting in Kueue's queue for admission", self.name)
                    waiting_logged = True
                admitted_at = None
                await self.clock.sleep(self.poll_seconds)
                continue
            admitted_at = self.clock.now() if admitted_at is None else admitted_at
            pods = (await asyncio.to_thread(core.list_namespaced_pod, self.namespace,
                                            label_selector=f"{JOBSET_NAME_LABEL}={self.name}")).items
            # Overlapping windows (the kubelet's clock, not the test's): LogTail drops what was shown.
            since = None if last_read is None else int(time.monotonic() - last_read + self.poll_seconds) + 5
            last_read = time.monotonic()
            output = await self._stream_logs(core, pods, since, tails) or output
            if state:
                current = [p for p in pods if _attempt(p) == restarts]
                failures = [f for f in map(_failure, current) if f]
                message = (_condition(jobset, state) or {}).get("message") or ""
                return {"status": state, "output": output, "failures": failures, "message": message,
                        "restarts": restarts}
            scheduled = sum(p.status.phase != "Pending" for p in pods if _attempt(p) == restarts)
            if scheduled < self.nodes and self.clock.now() - admitted_at > self.startup_timeout_seconds:
                return {"status": "Unscheduled", "failures": [], "output": None, "restarts": restarts,
                        "message": f"only {scheduled} of {self.nodes} gang pods were scheduled within "
                                   f"{self.startup_timeout_seconds} s of admission; is the GPU pool big enough?"}
            await self.clock.sleep(self.poll_seconds)

    async def _stream_logs(self, core: Any, pods: list[Any], since: int | None,
                           tails: dict[str, LogTail]) -> str | None:
        """Writes the pods' new log lines into the task log; returns the output URI if pod 0 printed it."""
        output = None
        for pod in sorted(pods, key=lambda p: (_attempt(p), _index(p))):
            if pod.status.phase == "Pending":
                continue
            first_read = pod.metadata.name not in tails
            for line in await self._new_lines(core, pod.metadata.name, None if first_read else since, tails):
                self.log.info("[node %d] %s", _index(pod), line)
                if _index(pod) == 0 and line.startswith(OUTPUT_LINE_PREFIX):
                    output = line[len(OUTPUT_LINE_PREFIX):]
        return output

    async def _new_lines(self, core: Any, pod: str, since: int | None, tails: dict[str, LogTail]) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        kwargs: dict[str, Any] = {"container": STAGE_CONTAINER, "timestamps": True}
        if since is not None:
            kwargs["since_seconds"] = since
        try:
            text = await asyncio.to_thread(core.read_namespaced_pod_log, pod, self.namespace, **kwargs)
        except ApiException as err:  # the pod went away between the listing and the read
            self.log.debug("no log for %s: %s", pod, err.reason)
            return []
        return tails.setdefault(pod, LogTail()).new_lines(text)


class GangOperator(BaseOperator):
    """Runs a herd command on ``resources.nodes`` pods at once, as a JobSet the triggerer follows."""

    template_fields = ("arguments",)
    ui_color = "#fde8d8"

    def __init__(self, *, arguments: list[str], stage_resources: Resources, settings: KubernetesSettings,
                 module: str = "tasks.cli", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arguments = arguments
        self.stage_resources = stage_resources
        self.settings = settings
        self.module = module

    def _custom(self) -> Any:
        return GangTrigger.clients(self.settings.kubernetes_conn_id)[1]

    def _gangs(self, custom: Any, key: str) -> list[dict[str, Any]]:
        found = custom.list_namespaced_custom_object(*JOBSET_API[:2], self.settings.namespace, JOBSET_API[2],
                                                     label_selector=f"{TASK_LABEL}={key}")
        return found.get("items") or []

    def execute(self, context: Any) -> None:
        custom = self._custom()
        key = task_key(self.dag_id, context["run_id"], self.task_id)
        # A gang of an earlier try that did not fail outlived the worker that followed it (it
        # may even have finished): follow it rather than start another.
        kept = sorted((g for g in self._gangs(custom, key) if finished(g) != "Failed"),
                      key=lambda g: finished(g) is not None)
        if kept:
            name = kept[0]["metadata"]["name"]
            self.log.info("gang %s of an earlier try is %s: reattaching", name,
                          (finished(kept[0]) or "running").lower())
        else:
            name = gang_name(self.dag_id, context["run_id"], self.task_id, context["ti"].try_number)
            stage = self.task_id.rsplit(".", 1)[-1]
            jobset = gang_jobset(name, key, stage, list(self.arguments), self.stage_resources, self.settings,
                                 self.module)
            self.log.info("gang %s: %d nodes x %d workers, at most %d restarts%s", name, self.stage_resources.nodes,
                          self.stage_resources.workers, self.settings.gang_restarts,
                          f", queue {self.settings.queue_name}" if self.settings.queue_name else "")
            custom.create_namespaced_custom_object(*JOBSET_API[:2], self.settings.namespace, JOBSET_API[2], jobset)
        self.defer(trigger=GangTrigger(name=name, namespace=self.settings.namespace, nodes=self.stage_resources.nodes,
                                       conn_id=self.settings.kubernetes_conn_id,
                                       poll_seconds=self.settings.gang_poll_seconds,
                                       startup_timeout_seconds=self.settings.startup_timeout_seconds),
                   method_name="resume", timeout=self.execution_timeout)

    def resume(self, context: Any, event: dict[str, Any]) -> str | None:
        """The gang has ended and the trigger has read its logs: delete it and turn its end into the task's."""
        self._delete(self._custom(), event["name"])
        status, failures = event["status"], event.get("failures") or []
        codes = {f["exit_code"] for f in failures}
        if status == "Completed":
            return event.get("output")
        if SKIP_EXIT in codes:
            raise AirflowSkipException(f"{self.task_id}: not selected, nothing cached, and no selected stage needs it")
        if BAD_INPUT_EXIT in codes:
            raise AirflowFailException(f"{self.task_id}: refused its config or input: {describe(failures)}")
        detail = describe(failures) or event.get("message") or "no pod failure recorded"
        if status == "Failed":
            raise RuntimeError(f"{self.task_id}: gang failed after {event.get('restarts', 0)} restarts; last: {detail}")
        raise RuntimeError(f"{self.task_id}: {event.get('message')}")

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any):
        if next_method == TRIGGER_FAIL_REPR:  # the deferral timed out (execution_timeout) or the trigger broke
            # The gang must not train on unwatched.
            custom = self._custom()
            for gang in self._gangs(custom, task_key(self.dag_id, context["run_id"], self.task_id)):
                self._delete(custom, gang["metadata"]["name"])
        return super().resume_execution(next_method, next_kwargs, context)

    def _delete(self, custom: Any, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            custom.delete_namespaced_custom_object(*JOBSET_API[:2], self.settings.namespace, JOBSET_API[2], name,
                                                   propagation_policy="Background")
        except ApiException as err:
            if err.status != 404:
                self.log.warning("could not delete gang %s: %s", name, err.reason)
