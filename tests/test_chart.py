"""charts/herd rendered offline with Helm's own Go code (helm-python-sdk), linted, every manifest
validated strictly, and the settings it hands Airflow turned into the pods and gangs they launch."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO
from herd.deploy import backend_settings
from herd.pipeline import STAGE_NAMES
from herd.stage import Resources
from k8s_checks import pod_specs, restricted_violations, validate

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[dev]'")

CHART = REPO / "charts" / "herd"
H100 = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
MULTI_NODE = {
    "image": {"repository": "registry.internal/herd-trainer", "tag": "0.1.0"},
    "nodePools": {"gpu": {"nodeSelector": H100, "gpusPerNode": 8, "devices": {"rdma/ib": "8"},
                          "ncclEnv": {"NCCL_IB_HCA": "mlx5_0,mlx5_1", "NCCL_SOCKET_IFNAME": "eth0"},
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                          {"key": "h100-reserved", "operator": "Equal", "value": "training",
                                           "effect": "NoSchedule"}]}},
    "training": {"stageNodes": {"pretrain": 4},
                 "gang": {"restarts": 2, "topologyKey": "cloud.google.com/gke-nodepool"}},
    "kueue": {"queueName": "h100-training", "localQueue": {"create": True, "clusterQueue": "h100"}},
    "stage": {"s3EndpointUrl": "https://s3.internal", "env": {"NCCL_DEBUG": "WARN", "NCCL_IB_HCA": "mlx5"}},
}


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="herd", namespace="herd")
    return [doc for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(manifests: list[dict], kind: str) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


@pytest.mark.parametrize("values", [{}, MULTI_NODE], ids=["default", "multi-node"])
def test_every_manifest_is_valid_and_every_pod_restricted(values):
    manifests = render(values)
    kinds = {m["kind"] for m in manifests}
    assert {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "NetworkPolicy", "Deployment", "Service",
            "PriorityClass"} <= kinds
    assert ("LocalQueue" in kinds) == bool(values.get("kueue"))
    for manifest in manifests:
        validate(manifest)
        for name, pod in pod_specs(manifest):
            assert restricted_violations(pod) == [], name
            assert pod["automountServiceAccountToken"] is False
            assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in pod["containers"])
    # Secrets are referenced, never rendered: installing the chart creates none.
    assert "Secret" not in kinds


def test_lint_reports_no_warning():
    for values in ({}, MULTI_NODE):
        report = helm.lint(CHART, values, strict=True, namespace="herd", kube_version="v1.32.0")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("bad, complaint", [
    ({"nodePools": {"gpu": {"gpusPerNode": "eight"}}}, "gpusPerNode"),
    ({"nodePool": {"gpu": {}}}, "nodePool"),
    ({"training": {"stageNodes": {"pretrian": 4}}}, "pretrian"),
    ({"training": {"stageNodes": {"pretrain": 0}}}, "pretrain"),
    ({"training": {"gang": {"mode": "indexed-job"}}}, "mode"),
    ({"kueue": {"localQueue": {"create": True, "clusterQueue": ""}}}, "clusterQueue|queueName"),
    ({"nodePools": {"gpu": {"devices": {"rdma/ib": "one"}}}}, "devices/rdma~1ib"),
    ({"nodePools": {"gpu": {"ncclEnv": {"AWS_SECRET_ACCESS_KEY": "x"}}}}, "AWS_SECRET_ACCESS_KEY"),
    ({"pools": {"pretrian": 8}}, "pretrian"),
    ({"training": {"gang": {"topologyKey": "one pool please"}}}, "topologyKey"),
    ({"stage": {"artifactRoot": "/mnt/shared"}}, "artifactRoot"),
    ({"stage": {"envSecret": ""}}, "envSecret"),
    ({"mlflow": {"backendStoreSecret": {"key": ""}}}, "backendStoreSecret/key"),
    ({"priorityClass": {"preemptionPolicy": "Sometimes"}}, "preemptionPolicy"),
    ({"imagePullSecrets": ["registry-credentials"]}, "imagePullSecrets"),
    ({"stage": {"serviceAccountAnnotations": {"eks.amazonaws.com/role-arn": 12}}}, "serviceAccountAnnotations"),
    ({"mlflow": {"auth": {"secret": ""}}}, "auth/secret"),
])
def test_bad_values_fail_at_install(bad, complaint):
    with pytest.raises(helm.HelmValuesError, match=complaint):
        render(bad)


def test_schema_knows_every_stage():
    schema = json.loads((CHART / "values.schema.json").read_text())
    names = schema["properties"]["training"]["properties"]["stageNodes"]["propertyNames"]["enum"]
    missing = set(STAGE_NAMES) - set(names)
    assert not missing, f"add {sorted(missing)} to stageNodes in charts/herd/values.schema.json"


def test_rbac_lets_the_airflow_workers_launch_pods_and_gangs_only():
    manifests = render({})
    role = by_kind(manifests, "Role")["herd-launcher"]
    granted = {(group, resource): set(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert {"create", "delete", "get", "list", "watch"} <= granted[("batch", "jobs")]
    assert {"create", "delete", "get", "list"} <= granted[("jobset.x-k8s.io", "jobsets")]
    assert {"create", "delete", "watch"} <= granted[("", "pods")]
    assert {"get"} <= granted[("", "pods/log")]
    assert not any(resource == "secrets" for _, resource in granted), "stage pods get Secrets by reference"
    # No shell in a running pod: a stage's output URI comes back in the pod's status.
    assert ("", "pods/exec") not in granted and ("", "pods/attach") not in granted
    assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in role["rules"])
    binding = by_kind(manifests, "RoleBinding")["herd-launcher"]
    assert {(s["name"], s["namespace"]) for s in binding["subjects"]} == {
        ("airflow-worker", "airflow"), ("airflow-scheduler", "airflow"), ("airflow-triggerer", "airflow")}
    stage_account = by_kind(manifests, "ServiceAccount")["herd-stage"]
    assert stage_account["automountServiceAccountToken"] is False


def test_network_policies_isolate_stage_pods_and_mlflow():
    policies = by_kind(render({}), "NetworkPolicy")
    stage = policies["herd-stage"]["spec"]
    assert stage["policyTypes"] == ["Ingress", "Egress"]
    # Only gang peers come in (rendezvous, NCCL); nothing else reaches a stage pod.
    assert stage["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "herd", "app.kubernetes.io/component": "gang"}}}]}]
    mlflow = policies["herd-mlflow"]["spec"]
    assert mlflow["ingress"][0]["ports"] == [{"port": 5000, "protocol": "TCP"}]
    assert not by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_mlflow_server_uses_postgres_and_s3_by_secret_reference():
    manifests = render({"mlflow": {"s3EndpointUrl": "http://minio.storage.svc:9000"}})
    pod = by_kind(manifests, "Deployment")["herd-mlflow"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"] == {"secretKeyRef": {"name": "herd-mlflow-db", "key": "uri"}}
    assert "herd-mlflow.herd-mlflow.svc:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    assert "--artifacts-destination=s3://herd/mlflow" in container["args"]
    assert container["envFrom"] == [{"secretRef": {"name": "herd-mlflow-s3"}}]
    service = by_kind(manifests, "Service")["herd-mlflow"]
    assert service["spec"]["selector"].items() <= pod_labels(manifests, "herd-mlflow").items()


def _secret_names(pod: dict) -> set[str]:
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    return ({v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
            | {e["secretRef"]["name"] for c in containers for e in c.get("envFrom", []) if "secretRef" in e}
            | {e["valueFrom"]["secretKeyRef"]["name"] for c in containers for e in c.get("env", [])
               if "secretKeyRef" in e.get("valueFrom", {})})


def test_mlflow_and_its_secrets_live_apart_from_the_namespace_stage_pods_are_created_in():
    manifests = render({})
    mlflow = [m for m in manifests if m["metadata"]["name"] == "herd-mlflow"]
    assert {m["kind"] for m in mlflow} == {"ServiceAccount", "Service", "Deployment", "NetworkPolicy"}
    assert {m["metadata"]["namespace"] for m in mlflow} == {"herd-mlflow"}
    pod = by_kind(manifests, "Deployment")["herd-mlflow"]["spec"]["template"]["spec"]
    assert _secret_names(pod) == {"herd-mlflow-db", "herd-mlflow-s3", "herd-mlflow-auth"}
    # Everything else of the release is in the stage pods' namespace, or Airflow's, and none of it is MLflow's.
    assert {m["metadata"].get("namespace") for m in manifests if m not in mlflow} <= {"herd", "airflow", None}
    stage = by_kind(manifests, "ConfigMap")["herd-stage"]["data"]
    assert stage["MLFLOW_TRACKING_URI"] == "http://herd-mlflow.herd-mlflow.svc:5000"
    policies = by_kind(manifests, "NetworkPolicy")
    to_mlflow = [rule for rule in policies["herd-stage"]["spec"]["egress"]
                 if any(peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "mlflow"
                        for peer in rule["to"])]
    assert to_mlflow[0]["to"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "herd-mlflow"}}
    from_stages = policies["herd-mlflow"]["spec"]["ingress"][0]["from"][0]
    assert from_stages["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "herd"}}
    together = render({"mlflow": {"namespace": ""}})
    assert by_kind(together, "Deployment")["herd-mlflow"]["metadata"]["namespace"] == "herd"


def test_mlflow_requires_a_login_from_its_basic_auth_app_with_credentials_from_a_secret():
    pod = by_kind(render({}), "Deployment")["herd-mlflow"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/etc/mlflow-auth/basic_auth.ini"
    for name in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {"name": "herd-mlflow-auth", "key": name}}}
    volume = next(v for v in pod["volumes"] if v["name"] == "auth-config")
    assert volume["secret"]["secretName"] == "herd-mlflow-auth"
    assert volume["secret"]["items"] == [{"key": "basic_auth.ini", "path": "basic_auth.ini"}]
    assert {"name": "auth-config", "mountPath": "/etc/mlflow-auth", "readOnly": True} in container["volumeMounts"]
    # The probes reach /health, which the auth app leaves open.
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    open_pod = by_kind(render({"mlflow": {"auth": {"enabled": False}}}), "Deployment")["herd-mlflow"]
    open_container = open_pod["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" not in open_container["args"]
    assert not any(e["name"].startswith("MLFLOW_AUTH") for e in open_container["env"])


def test_service_accounts_carry_workload_identity_and_registry_credentials():
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/herd-stage"}
    gke = {"iam.gke.io/gcp-service-account": "herd-mlflow@project.iam.gserviceaccount.com"}
    values = {"imagePullSecrets": [{"name": "registry-credentials"}], "stage": {"serviceAccountAnnotations": role},
              "mlflow": {"serviceAccountAnnotations": gke}}
    manifests = render(values)
    for manifest in manifests:
        validate(manifest)
    accounts = by_kind(manifests, "ServiceAccount")
    assert accounts["herd-stage"]["metadata"]["annotations"] == role
    assert accounts["herd-mlflow"]["metadata"]["annotations"] == gke
    for account in accounts.values():
        # The kubelet pulls every pod of the account with these, KubernetesPodOperator's and gangs' too.
        assert account["imagePullSecrets"] == [{"name": "registry-credentials"}]
        assert account["automountServiceAccountToken"] is False
    plain = by_kind(render({}), "ServiceAccount")
    assert not any("annotations" in a["metadata"] or "imagePullSecrets" in a for a in plain.values())


def pod_labels(manifests: list[dict], deployment: str) -> dict[str, str]:
    return by_kind(manifests, "Deployment")[deployment]["spec"]["template"]["metadata"]["labels"]


def _backend_env(manifests: list[dict]) -> dict[str, str]:
    backend = by_kind(manifests, "ConfigMap")["herd-backend"]
    assert backend["metadata"]["namespace"] == "airflow"  # where the Airflow workers can envFrom it
    return backend["data"]


def test_the_settings_airflow_reads_launch_single_pods_on_the_configured_pool():
    from kubernetes.client import ApiClient

    from herd_airflow.factory import command_task

    manifests = render({"nodePools": {"gpu": {"nodeSelector": H100}}})
    settings = backend_settings(_backend_env(manifests))
    assert settings.backend == "kubernetes"
    k8s = settings.kubernetes
    assert (k8s.namespace, k8s.image, k8s.env_config_map) == ("herd", "herd-trainer:0.1.0", "herd-stage")
    assert k8s.env_config_map in by_kind(manifests, "ConfigMap")
    assert k8s.service_account in by_kind(manifests, "ServiceAccount")
    assert k8s.priority_class in by_kind(manifests, "PriorityClass")
    operator = command_task("sft", ["stage", "sft"], Resources(cpu="8", memory="120Gi", gpus=1, shm="8Gi"),
                            returns_output=True, settings=settings)
    pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))
    validate(pod)
    assert restricted_violations(pod["spec"]) == []
    assert pod["spec"]["nodeSelector"] == H100
    # The pod asks for what the stage declares, and runs one worker per GPU.
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["containers"][0]["args"][:3] == ["launch", "--", "stage"]
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["sizeLimit"] == "8Gi"


def test_the_multi_node_settings_launch_a_valid_gang():
    from kubernetes.client import ApiClient

    from herd_airflow.factory import command_task
    from herd_airflow.gang import GangOperator
    from herd_airflow.manifests import gang_jobset

    manifests = render(MULTI_NODE)
    settings = backend_settings(_backend_env(manifests))
    k8s = settings.kubernetes
    assert k8s.stage_nodes == {"pretrain": 4} and k8s.gang_restarts == 2 and k8s.queue_name == "h100-training"
    operator = command_task("pretrain", ["stage", "pretrain"], Resources(cpu="32", memory="480Gi", gpus=8),
                            returns_output=True, settings=settings)
    assert isinstance(operator, GangOperator) and operator.stage_resources.nodes == 4
    jobset = gang_jobset("herd-pretrain-0a1b2c3d-t1", "0a1b2c3d0a1b2c3d", "pretrain", ["stage", "pretrain"],
                         operator.stage_resources, k8s)
    validate(jobset)
    assert jobset["spec"]["failurePolicy"]["maxRestarts"] == 2
    pod = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["nodeSelector"] == H100
    reserved = {"key": "h100-reserved", "operator": "Equal", "value": "training", "effect": "NoSchedule"}
    assert reserved in pod["tolerations"]
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100-training"
    assert by_kind(manifests, "LocalQueue")["h100-training"]["spec"]["clusterQueue"] == "h100"
    container = pod["containers"][0]
    assert container["resources"]["limits"]["rdma/ib"] == "8"
    assert {"name": "NCCL_IB_HCA", "value": "mlx5_0,mlx5_1"} in container["env"]
    together = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert together["topologyKey"] == "cloud.google.com/gke-nodepool"  # one node pool for the whole gang
    stage_config = by_kind(manifests, "ConfigMap")["herd-stage"]["data"]
    assert stage_config["AWS_ENDPOINT_URL_S3"] == "https://s3.internal" and stage_config["NCCL_DEBUG"] == "WARN"


def test_the_pools_cover_every_gpu_task_of_the_dags(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    pools = json.loads(by_kind(render({}), "ConfigMap")["herd-pools"]["data"]["pools.json"])
    assert all(pool["include_deferred"] for pool in pools.values())  # a deferred gang still holds its GPUs
    for name, value in _backend_env(render(MULTI_NODE)).items():
        monkeypatch.setenv(name, value)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    wanted = {(task.pool, task.pool_slots) for dag in bag.dags.values() for task in dag.tasks
              if task.pool != "default_pool"}
    assert wanted and {name for name, _ in wanted} <= set(pools)  # else a task waits forever for its pool
    for name, slots in wanted:
        assert slots <= pools[name]["slots"], f"{name}: a task needs {slots} GPUs, the pool has {pools[name]['slots']}"


def test_airflow_companion_values_wire_the_official_chart_to_herd():
    values = yaml.safe_load((CHART / "airflow-values.yaml").read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert values["airflowVersion"] == "3.3.2"
    assert yaml.safe_load(values["extraEnvFrom"]) == [{"configMapRef": {"name": "herd-backend"}}]
    assert "herd-backend" in by_kind(render({}), "ConfigMap")
    # Keys come from Secrets the operator creates; none is written into the values.
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key]
    assert values["data"] == {"metadataSecretName": "airflow-metadata-db"}
    assert not {"fernetKey", "apiSecretKey", "webserverSecretKey"} & set(values)


def test_airflow_companion_values_keep_task_logs_in_the_bucket_and_use_a_real_auth_manager():
    values = yaml.safe_load((CHART / "airflow-values.yaml").read_text())
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True"
    # The artifact bucket of herd's chart, beside (not inside) the artifacts.
    bucket = yaml.safe_load((CHART / "values.yaml").read_text())["stage"]["artifactRoot"].split("/")[2]
    assert logging["remote_base_log_folder"].startswith(f"s3://{bucket}/")
    assert logging["remote_log_conn_id"] == "herd_logs"
    # The connection comes from a Secret, by reference, under the name Airflow looks it up by.
    assert {"envName": "AIRFLOW_CONN_HERD_LOGS", "secretName": "airflow-remote-logs",
            "secretKey": "connection"} in values["secret"]
    assert values["config"]["core"]["auth_manager"] == (
        "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager")
    assert values["webserver"]["defaultUser"]["enabled"] is False  # no admin password in a values file
    assert "SimpleAuthManager" not in (CHART / "airflow-values.yaml").read_text()
