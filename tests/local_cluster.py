"""Just enough of the Kubernetes API for the gang operator, with a Job's pods run as local processes.

What it stands in for, and how:

- the Job controller: one pod per completion index, each started from the Job's own pod
  template (its command, args and literal env) with ``JOB_COMPLETION_INDEX`` set; with
  ``backoffLimit: 0`` the Job fails as soon as one pod fails, and its other pods are stopped;
- the headless Service's DNS: ``MASTER_ADDR`` (pod 0's name) resolves to this machine, and the
  Job's rendezvous port becomes a free local port (pods here share one network namespace);
- the image: its ``herd`` entry point is ``python -m tasks.cli`` in this checkout;
- the kubelet's log endpoint: lines with RFC 3339 timestamps, ``since_seconds`` honoured.

``capacity`` is how many nodes the pool has free: pods beyond it stay Pending and never start.
``faults`` adds arguments to the pods of the attempts whose job name ends with a pattern (``a1``:
the first attempt, ``a\\d+``: every one), the way a flaky node breaks one attempt and not the next.
"""

from __future__ import annotations

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

from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parent.parent
# terminationGracePeriodSeconds, shortened: a torch agent blocked in its exit barrier ignores SIGTERM.
GRACE_SECONDS = 2


@dataclass
class LocalPod:
    name: str
    index: int
    labels: dict[str, str]
    process: subprocess.Popen | None  # None: Pending, no node to run on
    lines: list[tuple[float, str]] = field(default_factory=list)

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


@dataclass
class LocalJob:
    name: str
    labels: dict[str, str]
    pods: list[LocalPod]
    state: str | None = None

    def settle(self) -> str | None:
        """The Job controller's decision: Failed at the first failed pod (others stopped), Complete when all succeed."""
        if self.state is None:
            if any(pod.phase == "Failed" for pod in self.pods):
                for pod in self.pods:
                    pod.stop(GRACE_SECONDS)
                self.state = "Failed"
            elif all(pod.phase == "Succeeded" for pod in self.pods):
                self.state = "Complete"
        return self.state


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _matches(labels: dict[str, str], selector: str) -> bool:
    return all(labels.get(key) == value for key, _, value in (term.partition("=") for term in selector.split(",")))


class LocalCluster:
    """Implements the CoreV1Api and BatchV1Api calls :class:`herd_airflow.gang.GangJobOperator` makes."""

    def __init__(self, workdir: Path, faults: dict[str, list[str]] | None = None, capacity: int = 64) -> None:
        self.workdir = workdir
        self.capacity = capacity
        self.faults = faults or {}
        self.jobs: dict[str, LocalJob] = {}
        self.created_jobs: list[dict] = []
        self.services: dict[str, dict] = {}
        self.deleted_services: list[str] = []

    # BatchV1Api
    def create_namespaced_job(self, namespace: str, body: k8s.V1Job) -> k8s.V1Job:
        job = ApiClient().sanitize_for_serialization(body)
        self.created_jobs.append(job)
        name, spec = job["metadata"]["name"], job["spec"]
        template = spec["template"]
        container = template["spec"]["containers"][0]
        assert spec["completionMode"] == "Indexed" and spec["backoffLimit"] == 0
        assert template["spec"]["subdomain"] in self.services, "the headless Service must exist before the Job"
        port = str(_free_port())
        extra = next((args for pattern, args in self.faults.items() if re.search(f"{pattern}$", name)), [])
        pods = []
        for index in range(spec["completions"]):
            env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
            env.update(JOB_COMPLETION_INDEX=str(index), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       HERD_HOME=str(self.workdir / f"{name}-{index}"), HOME=str(self.workdir))
            assert container["command"] == ["herd"]
            command = [sys.executable, "-m", "tasks.cli", *container["args"], *extra]
            process = None
            if index < self.capacity:
                process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
            labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": name,
                      "batch.kubernetes.io/job-completion-index": str(index)}
            pod = LocalPod(f"{name}-{index}-local", index, labels, process)
            if process:
                threading.Thread(target=pod.follow, daemon=True).start()
            pods.append(pod)
        self.jobs[name] = LocalJob(name, job["metadata"]["labels"], pods)
        return body

    def read_namespaced_job_status(self, name: str, namespace: str) -> k8s.V1Job:
        state = self.jobs[name].settle()
        conditions = [k8s.V1JobCondition(type=state, status="True")] if state else None
        return k8s.V1Job(metadata=k8s.V1ObjectMeta(name=name), status=k8s.V1JobStatus(conditions=conditions))

    def list_namespaced_job(self, namespace: str, label_selector: str) -> k8s.V1JobList:
        items = [k8s.V1Job(metadata=k8s.V1ObjectMeta(name=job.name, labels=job.labels))
                 for job in self.jobs.values() if _matches(job.labels, label_selector)]
        return k8s.V1JobList(items=items)

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str | None = None) -> None:
        for pod in self.jobs.pop(name).pods:
            pod.stop(grace=0)

    # CoreV1Api
    def create_namespaced_service(self, namespace: str, body: k8s.V1Service) -> k8s.V1Service:
        service = ApiClient().sanitize_for_serialization(body)
        if service["metadata"]["name"] in self.services:
            raise ApiException(status=409, reason="AlreadyExists")
        self.services[service["metadata"]["name"]] = service
        return body

    def delete_namespaced_service(self, name: str, namespace: str) -> None:
        if self.services.pop(name, None) is None:
            raise ApiException(status=404, reason="NotFound")
        self.deleted_services.append(name)

    def list_namespaced_pod(self, namespace: str, label_selector: str) -> k8s.V1PodList:
        items = []
        for job in self.jobs.values():
            for pod in job.pods:
                if not _matches(pod.labels, label_selector):
                    continue
                code = pod.exit_code()
                state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(
                    exit_code=code, reason="Completed" if code == 0 else "Error")) if code is not None else None
                status = k8s.V1ContainerStatus(name="stage", image="herd-trainer", image_id="", ready=pod.phase == "Running",
                                               restart_count=0, state=state)
                items.append(k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=pod.name, labels=pod.labels),
                                       status=k8s.V1PodStatus(phase=pod.phase, container_statuses=[status])))
        return k8s.V1PodList(items=items)

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str, timestamps: bool = False,
                                since_seconds: int | None = None) -> str:
        assert container == "stage"
        pod = next(p for job in self.jobs.values() for p in job.pods if p.name == name)
        start = time.time() - since_seconds if since_seconds else 0.0
        lines = []
        for stamp, line in list(pod.lines):
            if stamp >= start:
                when = datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                lines.append(f"{when} {line}" if timestamps else line)
        return "\n".join(lines)

    def close(self) -> None:
        for name in list(self.jobs):
            self.delete_namespaced_job(name, "")
