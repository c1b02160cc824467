"""Offline checks of Kubernetes objects shared by the chart, pod and gang tests.

``restricted_violations`` is the restricted Pod Security Standard (Kubernetes 1.32,
"latest" profile) written out as the admission controller applies it to a pod spec, so a
manifest that passes here is admitted by a namespace labelled
``pod-security.kubernetes.io/enforce: restricted``.

``validate_jobset`` checks a JobSet against the published CRD's schema (tests/assets/crds, which
says where it comes from), with unknown fields refused, and its Job template against
Kubernetes' own batch/v1 Job schema.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.32"
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def validate(manifest: dict[str, Any]) -> None:
    """Schema validation with unknown fields refused (a misspelt field is an error, not a no-op).

    Kubernetes' own kinds against its schema, the custom resources (JobSet, Kueue's LocalQueue)
    against their projects' published CRD schemas.
    """
    if manifest.get("kind") == "JobSet":
        validate_jobset(manifest)
    elif manifest.get("kind") in CUSTOM_KINDS:
        assert manifest["apiVersion"] == CUSTOM_KINDS[manifest["kind"]][0], manifest["apiVersion"]
        jsonschema.validate(manifest, crd_schema(CUSTOM_KINDS[manifest["kind"]][1]))
    else:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


CRDS = Path(__file__).parent / "assets" / "crds"
# kind: (apiVersion, schema file under CRDS)
CUSTOM_KINDS = {"JobSet": ("jobset.x-k8s.io/v1alpha2", "jobset-v1alpha2"),
                "LocalQueue": ("kueue.x-k8s.io/v1beta2", "localqueue-v1beta2")}


def _closed(schema: Any) -> Any:
    """A structural schema with unknown fields refused where the API server would prune them."""
    if isinstance(schema, dict):
        schema = {key: _closed(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    return [_closed(item) for item in schema] if isinstance(schema, list) else schema


def crd_schema(name: str) -> dict[str, Any]:
    schema = json.loads((CRDS / f"{name}.json").read_text())
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server, not the CRD
    return _closed(schema)


def validate_jobset(manifest: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == CUSTOM_KINDS["JobSet"][0], manifest["apiVersion"]
    jsonschema.validate(manifest, crd_schema("jobset-v1alpha2"))
    for replicated in manifest["spec"]["replicatedJobs"]:
        template = copy.deepcopy(replicated["template"])
        validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": replicated["name"],
                                                                        **template.get("metadata", {})},
                  "spec": template["spec"]})


def pod_specs(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec a manifest creates, with a name for messages."""
    kind, name = manifest.get("kind"), manifest.get("metadata", {}).get("name")
    spec = manifest.get("spec") or {}
    if kind == "Pod":
        yield f"Pod/{name}", spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield f"{kind}/{name}", spec["template"]["spec"]
    elif kind == "CronJob":
        yield f"CronJob/{name}", spec["jobTemplate"]["spec"]["template"]["spec"]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    pod_context = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"{host} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} is of type {sorted(kinds)}")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']}")
    containers = [*(pod.get("initContainers") or []), *pod.get("containers", []),
                  *(pod.get("ephemeralContainers") or [])]
    for container in containers:
        where = f"container {container['name']}"
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{where} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where} may escalate privileges")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{where} may run as root")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{where} runs as uid 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{where} has seccomp profile {seccomp}")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where} does not drop ALL capabilities")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where} adds capabilities {capabilities['add']}")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{where} uses a host port")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where} sets procMount")
    return problems
