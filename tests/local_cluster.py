"""Just enough of the Kubernetes API for the gang operator and its trigger, with a JobSet's pods run here.

What it stands in for, and how:

- Kueue: a JobSet with the queue label is suspended on creation (Kueue's webhook does that)
  and admitted, whole, once ``clock.now()`` reaches ``admit_at``;
- the JobSet controller: one indexed Job of ``completions`` pods per attempt, each started from
  the pod template (its command, args and literal env) with ``JOB_COMPLETION_INDEX`` set; the
  Job's ``podFailurePolicy`` and the JobSet's ``failurePolicy`` rules are applied as the
  controllers apply them (the Job's failure reason and message, the first matching rule's
  action, ``maxRestarts``), a restart deletes the attempt's pods and starts them all again;
- the headless Service's DNS: ``MASTER_ADDR`` (pod 0's name) resolves to this machine, and the
  rendezvous port becomes a free local port per attempt (pods here share one network namespace);
- the image: its ``herd`` entry point is ``python -m tasks.cli`` in this checkout;
- the kubelet's log endpoint: lines with RFC 3339 timestamps, ``since_seconds`` honoured.

``capacity`` is how many nodes the pool has free: pods beyond it stay Pending and never start.
``faults`` adds arguments to the pods of the attempts that match a pattern (``a1``: the first
attempt, ``a\\d+``: every one), the way a flaky node breaks one attempt and not the next.
``preempt`` names, by attempt (1 first), the node that the scheduler preempts once it runs.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
# terminationGracePeriodSeconds, shortened: a torch agent blocked in its exit barrier ignores SIGTERM.
GRACE_SECONDS = 2
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@dataclass
class LocalPod:
    name: str
    index: int
    labels: dict[str, str]
    process: subprocess.Popen | None  # None: Pending, no node to run on
    lines: list[tuple[float, str]] = field(default_factory=list)
    preempted: bool = False

    def follow(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def exit_code(self) -> int | None:
        code = self.process.poll() if self.process else None
        return 128 - code if code is not None and code < 0 else code  # a signal N: the runtime reports 128 + N

    @property
    def phase(self) -> str:
        code = self.exit_code()
        return "Pending" if self.process is None else "Running" if code is None else (
            "Succeeded" if code == 0 else "Failed")

    def stop(self, grace: float) -> None:
        """SIGTERM, then the kubelet's SIGKILL when the grace period is over."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def job_failure(pods: list[LocalPod], policy: dict[str, Any], namespace: str) -> tuple[str, str] | None:
    """The Job controller's verdict on failed pods: (reason, message), as pkg/controller/job words them."""
    for pod in (p for p in pods if p.phase == "Failed"):
        for at, rule in enumerate(policy.get("rules") or []):
            codes = rule.get("onExitCodes")
            if codes and (pod.exit_code() in codes["values"]) == (codes["operator"] == "In"):
                return "PodFailurePolicy", (f"Container {codes['containerName']} for pod {namespace}/{pod.name} failed "
                                            f"with exit code {pod.exit_code()} matching {rule['action']} rule at "
                                            f"index {at}")
            conditions = {c["type"] for c in rule.get("onPodConditions") or []}
            if pod.preempted and "DisruptionTarget" in conditions:
                return "PodFailurePolicy", (f"Pod {namespace}/{pod.name} has condition DisruptionTarget matching "
                                            f"{rule['action']} rule at index {at}")
        return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    return None


def jobset_action(failure_policy: dict[str, Any], reason: str, message: str) -> str:
    """The first matching rule's action (an empty list matches anything); RestartJobSet when none matches."""
    for rule in failure_policy.get("rules") or []:
        reasons, patterns = rule.get("onJobFailureReasons") or [], rule.get("onJobFailureMessagePatterns") or []
        if (not reasons or reason in reasons) and (not patterns or any(re.search(p, message) for p in patterns)):
            return rule["action"]
    return "RestartJobSet"


@dataclass
class LocalJobSet:
    manifest: dict[str, Any]
    pods: list[LocalPod] = field(default_factory=list)
    attempt: int = 0  # jobset.sigs.k8s.io/restart-attempt
    counted: int = 0  # restartsCountTowardsMax
    conditions: list[dict[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def job(self) -> dict[str, Any]:
        return self.manifest["spec"]["replicatedJobs"][0]["template"]

    def state(self) -> str | None:
        return next((c["type"] for c in self.conditions if c["type"] in ("Completed", "Failed")), None)

    def as_api(self) -> dict[str, Any]:
        return {**copy.deepcopy(self.manifest),
                "status": {"restarts": self.attempt, "restartsCountTowardsMax": self.counted,
                           "conditions": copy.deepcopy(self.conditions)}}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _matches(labels: dict[str, str], selector: str) -> bool:
    return all(labels.get(key) == value for key, _, value in (term.partition("=") for term in selector.split(",")))


class LocalCluster:
    """Implements the CoreV1Api and CustomObjectsApi calls of :mod:`herd_airflow.gang`."""

    def __init__(self, workdir: Path, faults: dict[str, list[str]] | None = None, capacity: int = 64,
                 preempt: dict[int, int] | None = None, clock: Any = None, admit_at: float = 0.0) -> None:
        self.workdir = workdir
        self.capacity = capacity
        self.faults = faults or {}
        self.preempt = preempt or {}
        self.clock = clock
        self.admit_at = admit_at
        self.jobsets: dict[str, LocalJobSet] = {}
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.lock = threading.Lock()  # the trigger calls from threads

    # CustomObjectsApi, for jobset.x-k8s.io/v1alpha2 jobsets
    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict[str, Any]) -> dict[str, Any]:
        assert (group, version, plural) == ("jobset.x-k8s.io", "v1alpha2", "jobsets")
        with self.lock:
            name = body["metadata"]["name"]
            if name in self.jobsets:
                raise ApiException(status=409, reason="AlreadyExists")
            manifest = copy.deepcopy(body)
            if QUEUE_LABEL in manifest["metadata"].get("labels", {}):
                manifest["spec"]["suspend"] = True  # Kueue's webhook: held until admitted
            self.created.append(copy.deepcopy(manifest))
            jobset = self.jobsets[name] = LocalJobSet(manifest)
            job = jobset.job["spec"]
            assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 0
            if not manifest["spec"].get("suspend"):
                self._start(jobset)
            return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict[str, Any]:
        with self.lock:
            if name not in self.jobsets:
                raise ApiException(status=404, reason="NotFound")
            jobset = self.jobsets[name]
            self._reconcile(jobset, namespace)
            return jobset.as_api()

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                      label_selector: str) -> dict[str, Any]:
        with self.lock:
            return {"items": [j.as_api() for j in self.jobsets.values()
                              if _matches(j.manifest["metadata"]["labels"], label_selector)]}

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                        propagation_policy: str | None = None) -> None:
        with self.lock:
            if name not in self.jobsets:
                raise ApiException(status=404, reason="NotFound")
            for pod in self.jobsets.pop(name).pods:
                pod.stop(grace=0)
            self.deleted.append(name)

    def _reconcile(self, jobset: LocalJobSet, namespace: str) -> None:
        """Kueue's admission, then the Job and JobSet controllers' decisions on this attempt's pods."""
        spec = jobset.manifest["spec"]
        if spec.get("suspend"):
            if self.clock is None or self.clock.now() < self.admit_at:
                return
            spec["suspend"] = False
            self._start(jobset)
        if jobset.state():
            return
        failure = job_failure(jobset.pods, jobset.job["spec"].get("podFailurePolicy") or {}, namespace)
        if failure:
            for pod in jobset.pods:
                pod.stop(GRACE_SECONDS)
            policy = spec.get("failurePolicy") or {}
            action = jobset_action(policy, *failure)
            counts = action == "RestartJobSet"
            if action == "FailJobSet" or (counts and jobset.counted >= policy.get("maxRestarts", 0)):
                jobset.conditions.append({"type": "Failed", "status": "True", "reason": failure[0],
                                          "message": failure[1]})
                return
            jobset.attempt += 1
            jobset.counted += counts
            self._start(jobset)  # the old Jobs and their pods are deleted, logs and all
        elif jobset.pods and all(pod.phase == "Succeeded" for pod in jobset.pods):
            jobset.conditions.append({"type": "Completed", "status": "True"})

    def _start(self, jobset: LocalJobSet) -> None:
        template = jobset.job["spec"]["template"]
        container = template["spec"]["containers"][0]
        assert container["command"] == ["herd"]
        name, attempt, nodes = jobset.name, jobset.attempt, jobset.job["spec"]["completions"]
        extra = next((args for pattern, args in self.faults.items() if re.fullmatch(pattern, f"a{attempt + 1}")), [])
        port = str(_free_port())
        jobset.pods = []
        for index in range(nodes):
            env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
            env.update(JOB_COMPLETION_INDEX=str(index), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       HERD_HOME=str(self.workdir / f"{name}-{attempt}-{index}"), HOME=str(self.workdir))
            process = None
            if index < self.capacity:
                process = subprocess.Popen([sys.executable, "-m", "tasks.cli", *container["args"], *extra], cwd=REPO,
                                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           start_new_session=True)
            labels = {**template["metadata"]["labels"], "jobset.sigs.k8s.io/jobset-name": name,
                      "jobset.sigs.k8s.io/restart-attempt": str(attempt),
                      "batch.kubernetes.io/job-completion-index": str(index)}
            pod = LocalPod(f"{name}-node-0-{index}-a{attempt}", index, labels, process)
            if process:
                threading.Thread(target=pod.follow, daemon=True).start()
            jobset.pods.append(pod)
        if self.preempt.get(attempt + 1) is not None:
            victim = jobset.pods[self.preempt[attempt + 1]]
            time.sleep(1.0)  # it ran a little before the scheduler chose it
            victim.preempted = True
            victim.stop(grace=0)

    # CoreV1Api
    def list_namespaced_pod(self, namespace: str, label_selector: str) -> k8s.V1PodList:
        with self.lock:
            pods = [pod for jobset in self.jobsets.values() for pod in jobset.pods
                    if _matches(pod.labels, label_selector)]
        items = []
        for pod in pods:
            code = pod.exit_code()
            state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(
                exit_code=code, reason="Completed" if code == 0 else "Error")) if code is not None else None
            status = k8s.V1ContainerStatus(name="stage", image="herd-trainer", image_id="",
                                           ready=pod.phase == "Running", restart_count=0, state=state)
            conditions = [k8s.V1PodCondition(type="DisruptionTarget", status="True", reason="PreemptionByScheduler")
                          ] if pod.preempted else None
            items.append(k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=pod.name, labels=pod.labels),
                                   status=k8s.V1PodStatus(phase=pod.phase, container_statuses=[status],
                                                          conditions=conditions)))
        return k8s.V1PodList(items=items)

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str, timestamps: bool = False,
                                since_seconds: int | None = None) -> str:
        assert container == "stage"
        with self.lock:
            found = [p for jobset in self.jobsets.values() for p in jobset.pods if p.name == name]
        if not found:
            raise ApiException(status=404, reason="NotFound")
        start = time.time() - since_seconds if since_seconds else 0.0
        lines = []
        for stamp, line in list(found[0].lines):
            if stamp >= start:
                when = datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                lines.append(f"{when} {line}" if timestamps else line)
        return "\n".join(lines)

    def close(self) -> None:
        for name in list(self.jobsets):
            self.delete_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", "", "jobsets", name)
