"""Multi-node stages: the gang's Job and Service as rendered (validated strictly), the rank launcher
with real torch.distributed processes, and the gang operator driving a Job whose pods run here."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from kubernetes.client import ApiClient

from conftest import REPO
from herd.deploy import backend_settings
from herd.stage import SKIP_EXIT, Resources
from herd_airflow.gang import GangJobOperator, LogTail, gang_name
from herd_airflow.manifests import gang_job, gang_service
from k8s_checks import restricted_violations, validate
from local_cluster import LocalCluster

H100 = "cloud.google.com/gke-accelerator=nvidia-h100-80gb"
GANG = Resources(cpu="96", memory="1500Gi", gpus=8, shm="512Gi", nodes=4)
CHECK = "tasks.runtime.distcheck"


def _settings(**env: str):
    return backend_settings({"HERD_BACKEND": "kubernetes", "HERD_K8S_GPU_POOL": H100, **env}).kubernetes


def _manifests(resources: Resources = GANG, **env: str) -> tuple[dict, dict]:
    settings = _settings(**env)
    job = gang_job("herd-pretrain-1234abcd", "herd-pretrain-1234abcd-t1a1", "pretrain",
                   ["stage", "pretrain", "--run", "r1"], resources, settings)
    service = gang_service("herd-pretrain-1234abcd", "pretrain", settings)
    client = ApiClient()
    return client.sanitize_for_serialization(job), client.sanitize_for_serialization(service)


def test_gang_job_and_service_are_valid_and_wired_together():
    job, service = _manifests()
    validate(job)
    validate(service)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    # Pod 0's DNS name, <job>-0.<service>, is the rendezvous every rank dials.
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == "herd-pretrain-1234abcd-t1a1-0.herd-pretrain-1234abcd"
    assert env["MASTER_PORT"] == "29500" == str(service["spec"]["ports"][0]["port"])
    assert (env["HERD_NNODES"], env["HERD_NPROC_PER_NODE"]) == ("4", "8")
    assert container["command"] == ["herd"]
    assert container["args"] == ["launch", "--", "stage", "pretrain", "--run", "r1"]
    # Every pod on one node of the same H100 pool, with all its GPUs and a large /dev/shm.
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == {"batch.kubernetes.io/job-name": "herd-pretrain-1234abcd-t1a1"}
    assert "podAffinity" not in pod["affinity"]  # no topology asked for: any node of the pool
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Gi"}
    assert "AWS_SECRET_ACCESS_KEY" not in str(job)


def test_kueue_queue_and_long_names_stay_valid():
    job, _ = _manifests(HERD_K8S_QUEUE="h100-training")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100-training"
    name = gang_name("maverick.pretrain_with_a_rather_long_task_name", "scheduled__2026-11-27T00:00:00+00:00")
    assert len(f"{name}-t12a4-15") <= 63 and name == name.lower()
    names = {gang_name("scout.pretrain", "r1"), gang_name("scout.pretrain", "r2"), gang_name("maverick.pretrain", "r1")}
    assert len(names) == 3


def test_the_factory_makes_a_gang_when_a_stage_spans_nodes():
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from herd_airflow.factory import command_task

    settings = backend_settings({"HERD_BACKEND": "kubernetes", "HERD_K8S_STAGE_NODES": "pretrain=2"})
    gang = command_task("pretrain", ["stage", "pretrain"], Resources(gpus=8), returns_output=True, settings=settings)
    assert isinstance(gang, GangJobOperator) and gang.stage_resources.nodes == 2
    single = command_task("tokenizer", ["stage", "tokenizer"], Resources(), returns_output=True, settings=settings)
    assert isinstance(single, KubernetesPodOperator)
    assert isinstance(command_task("pretrain", ["stage", "pretrain"], Resources(gpus=8, nodes=3),
                                   settings=backend_settings({"HERD_BACKEND": "kubernetes"})), GangJobOperator)


def test_the_dag_runs_every_pretrain_task_as_a_gang(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("HERD_BACKEND", "kubernetes")
    monkeypatch.setenv("HERD_K8S_STAGE_NODES", "pretrain=2")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    from airflow.serialization.serialized_objects import DagSerialization

    dag = bag.dags["llama4_pipeline"]
    gangs = {t.task_id for t in dag.tasks if isinstance(t, GangJobOperator)}
    assert gangs and gangs == {t.task_id for t in dag.tasks if t.task_id.split(".")[-1] == "pretrain"}
    # The dag-processor stores the DAG serialized: the gang tasks must survive the round trip.
    stored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert {stored.get_task(task_id).task_type for task_id in gangs} == {"GangJobOperator"}


def test_log_tail_shows_each_line_once_across_overlapping_reads():
    tail = LogTail()
    first = "2026-11-27T10:00:00.1Z a\n2026-11-27T10:00:00.12Z b"
    assert tail.new_lines(first) == ["a", "b"]
    # Kubernetes trims trailing zeros: .1 < .12 < .125 must still sort as time does.
    assert tail.new_lines(first + "\n2026-11-27T10:00:00.125Z c\n2026-11-27T10:00:00.125Z d") == ["c", "d"]
    assert tail.new_lines("2026-11-27T10:00:00.125Z d\n2026-11-27T10:00:01Z e") == ["e"]


def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tasks.cli", "launch", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def test_launcher_starts_two_ranks_here_and_keeps_a_refusal_as_exit_2():
    ok = _launch("--nproc", "2", "--module", CHECK, "--", "--output", "check://two-ranks")
    refused = _launch("--nproc", "2", "--module", CHECK, "--", "--fail-rank", "1", "--exit-code", "2")
    out, _ = ok.communicate(timeout=120)
    assert ok.returncode == 0, out
    assert "distcheck rank 0/2" in out and "distcheck rank 1/2" in out and out.count(": ok") == 2
    assert "HERD_OUTPUT=check://two-ranks" in out
    out, _ = refused.communicate(timeout=120)
    assert refused.returncode == 2, out  # the stage contract's "bad input": Airflow must not retry it


def test_launcher_topology_from_an_indexed_job():
    from tasks.runtime.launch import build_parser, topology, torchrun_arguments

    args = build_parser().parse_args(["--", "stage", "pretrain"])
    env = {"HERD_NNODES": "4", "HERD_NPROC_PER_NODE": "8", "JOB_COMPLETION_INDEX": "3",
           "MASTER_ADDR": "job-0.gang", "MASTER_PORT": "29500"}
    topo = topology(args, env)
    assert (topo.nnodes, topo.node_rank, topo.nproc_per_node, topo.world_size) == (4, 3, 8, 32)
    argv = torchrun_arguments(topo, "tasks.cli", ["stage", "pretrain"])
    assert "--node-rank=3" in argv and "--master-addr=job-0.gang" in argv and "--rdzv-backend=static" in argv
    assert argv[-5:] == ["-m", "tasks.cli", "--", "stage", "pretrain"]
    with pytest.raises(ValueError, match="MASTER_PORT"):
        topology(args, {"HERD_NNODES": "2"})
    with pytest.raises(ValueError, match="node rank 2 of 2"):
        topology(args, {**env, "HERD_NNODES": "2", "JOB_COMPLETION_INDEX": "2"})


def _gang_operator(tmp_path, restarts: int) -> tuple[GangJobOperator, LocalCluster]:
    settings = _settings(HERD_K8S_GANG_RESTARTS=str(restarts), HERD_K8S_NAMESPACE="herd")
    operator = GangJobOperator(task_id="scout.pretrain", arguments=["--output", "s3://herd/artifacts/pretrain/x"],
                               stage_resources=Resources(cpu="1", memory="2Gi", nodes=2), settings=settings,
                               module=CHECK, poll_seconds=0.3)
    return operator, settings


def _run(operator: GangJobOperator, cluster: LocalCluster, try_number: int = 1):
    operator._clients = lambda: (cluster, cluster)
    try:
        return operator.execute({"run_id": "manual__1", "ti": SimpleNamespace(try_number=try_number)})
    finally:
        cluster.close()


def test_a_failed_node_restarts_the_whole_gang_and_the_output_comes_from_rank_0(tmp_path, capsys):
    operator, _ = _gang_operator(tmp_path, restarts=1)
    cluster = LocalCluster(tmp_path, faults={"a1": ["--fail-rank", "1", "--exit-code", "1"]})
    output = _run(operator, cluster)
    assert output == "s3://herd/artifacts/pretrain/x"
    names = [job["metadata"]["name"] for job in cluster.created_jobs]
    gang = gang_name("scout.pretrain", "manual__1")
    assert names == [f"{gang}-t1a1", f"{gang}-t1a2"]  # a new Job, both nodes, not one replaced pod
    log = capsys.readouterr().out  # the task log: Airflow's task logger writes to stdout here
    assert "restarting the whole gang" in log and "node 1" in log and "exit 1" in log
    assert "[node 0] distcheck rank 0/2" in log and "[node 1] distcheck rank 1/2" in log
    assert cluster.deleted_services == [gang] and not cluster.jobs  # nothing left behind on success


def test_a_refused_config_fails_at_once_and_exhausted_restarts_fail_the_task(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    operator, _ = _gang_operator(tmp_path, restarts=3)
    refused = LocalCluster(tmp_path, faults={r"a\d+": ["--fail-rank", "0", "--exit-code", "2"]})
    with pytest.raises(AirflowFailException, match="refused its config"):
        _run(operator, refused)
    assert len(refused.created_jobs) == 1
    operator, _ = _gang_operator(tmp_path, restarts=0)
    broken = LocalCluster(tmp_path, faults={"a1": ["--fail-rank", "1", "--exit-code", "3"]})
    with pytest.raises(RuntimeError, match="gang failed 1 times.*exit 3"):
        _run(operator, broken, try_number=2)
    assert [job["metadata"]["name"].rsplit("-", 1)[-1] for job in broken.created_jobs] == ["t2a1"]


def test_a_gang_whose_stage_is_not_needed_is_skipped_not_restarted(tmp_path):
    from airflow.sdk.exceptions import AirflowSkipException

    operator, _ = _gang_operator(tmp_path, restarts=3)
    not_needed = LocalCluster(tmp_path, faults={r"a\d+": ["--fail-rank", "0", "--exit-code", str(SKIP_EXIT)]})
    with pytest.raises(AirflowSkipException, match="no selected stage needs it"):
        _run(operator, not_needed)
    assert len(not_needed.created_jobs) == 1 and not not_needed.jobs


def test_half_a_gang_gives_its_nodes_back_after_the_startup_timeout(tmp_path):
    operator, _ = _gang_operator(tmp_path, restarts=3)
    operator.settings = operator.settings.model_copy(update={"startup_timeout_seconds": 2})
    cluster = LocalCluster(tmp_path, capacity=1)  # node 0 starts and waits at the rendezvous; node 1 never lands
    with pytest.raises(RuntimeError, match="only 1 of 2 gang pods were scheduled within 2 s"):
        _run(operator, cluster)
    assert len(cluster.created_jobs) == 1 and not cluster.jobs  # no restart into the same shortage; Job deleted
