"""Multi-node stages: the gang's JobSet as rendered (checked against the published CRD schema and
Kubernetes' Job schema), the rank launcher with real torch.distributed processes, and the gang
operator and its trigger driving a JobSet whose pods run here (Kueue, the Job and JobSet
controllers simulated by tests/local_cluster.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from types import SimpleNamespace

import jsonschema
import pytest

from conftest import REPO
from herd.deploy import backend_settings
from herd.stage import SKIP_EXIT, Resources
from herd_airflow.gang import GangOperator, GangTrigger, LogTail, gang_name
from herd_airflow.manifests import gang_jobset, rank0_address
from k8s_checks import restricted_violations, validate_jobset
from local_cluster import LocalCluster

H100 = "cloud.google.com/gke-accelerator=nvidia-h100-80gb"
GANG = Resources(cpu="96", memory="1500Gi", gpus=8, shm="512Gi", nodes=4)
CHECK = "tasks.runtime.distcheck"


def _settings(**env: str):
    return backend_settings({"HERD_BACKEND": "kubernetes", "HERD_K8S_GPU_POOL": H100, **env}).kubernetes


def _jobset(resources: Resources = GANG, **env: str) -> dict:
    return gang_jobset("herd-pretrain-1234abcd-t1", "0123456789abcdef", "pretrain",
                       ["stage", "pretrain", "--run", "r1"],
                       resources, _settings(**env))


def test_the_gang_jobset_is_valid_and_wired_together():
    jobset = _jobset(HERD_K8S_QUEUE="h100-training", HERD_K8S_GANG_RESTARTS="2",
                     HERD_K8S_GPU_DEVICES='{"rdma/ib": "8"}', HERD_K8S_NCCL_ENV='{"NCCL_IB_HCA": "mlx5_0,mlx5_1"}')
    validate_jobset(jobset)
    spec = jobset["spec"]
    job = spec["replicatedJobs"][0]["template"]["spec"]
    pod = job["template"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"], job["backoffLimit"]) == ("Indexed", 4, 4, 0)
    assert pod["restartPolicy"] == "Never" and restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    # Kueue admits the whole gang: the queue label is on the JobSet.
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h100-training"
    # Pod 0's DNS name, from the JobSet's own headless Service, is the rendezvous every rank dials.
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MASTER_ADDR"] == rank0_address("herd-pretrain-1234abcd-t1") == (
        "herd-pretrain-1234abcd-t1-node-0-0.herd-pretrain-1234abcd-t1")
    assert env["MASTER_PORT"] == "29500" and (env["HERD_NNODES"], env["HERD_NPROC_PER_NODE"]) == ("4", "8")
    assert env["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"
    assert container["command"] == ["herd"]
    assert container["args"] == ["launch", "--", "stage", "pretrain", "--run", "r1"]
    assert container["resources"]["limits"] == {"memory": "1500Gi", "nvidia.com/gpu": "8", "rdma/ib": "8"}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == {"jobset.sigs.k8s.io/jobset-name": "herd-pretrain-1234abcd-t1"}
    # Restarts are the JobSet's: a preemption does not count, a refusal does not restart.
    policy = spec["failurePolicy"]
    assert policy["maxRestarts"] == 2
    assert [(r["name"], r["action"]) for r in policy["rules"]] == [
        ("refused", "FailJobSet"), ("preempted", "RestartJobSetAndIgnoreMaxRestarts")]
    assert {"type": "DisruptionTarget", "status": "True"} in job["podFailurePolicy"]["rules"][1]["onPodConditions"]
    assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, SKIP_EXIT]
    assert "AWS_SECRET_ACCESS_KEY" not in str(jobset)


@pytest.mark.parametrize("path, value", [
    (("spec", "failurePolicy", "maxRestart"), 3),  # misspelt
    (("spec", "failurePolicy", "rules", 0, "action"), "Restart"),  # not one of the CRD's actions
    (("spec", "network", "enableDNSHostnames"), "yes"),  # ill-typed
])
def test_the_crd_schema_refuses_what_the_api_server_would(path, value):
    jobset = _jobset()
    node = jobset
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_jobset(jobset)


def test_gang_names_are_dns_labels_per_task_and_try():
    name = gang_name("llama4_pipeline", "scheduled__2026-11-27T00:00:00+00:00",
                     "maverick.pretrain_with_a_rather_long_task_name", 12)
    assert len(f"{name}-node-0-15") <= 63 and name == name.lower()
    names = {gang_name("d", "r1", "scout.pretrain", 1), gang_name("d", "r2", "scout.pretrain", 1),
             gang_name("d", "r1", "maverick.pretrain", 1), gang_name("d", "r1", "scout.pretrain", 2),
             gang_name("e", "r1", "scout.pretrain", 1)}
    assert len(names) == 5 and gang_name("d", "r1", "scout.pretrain", 1) == gang_name("d", "r1", "scout.pretrain", 1)


def test_the_factory_makes_a_gang_when_a_stage_spans_nodes():
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    from herd_airflow.factory import command_task

    settings = backend_settings({"HERD_BACKEND": "kubernetes", "HERD_K8S_STAGE_NODES": "pretrain=2"})
    gang = command_task("pretrain", ["stage", "pretrain"], Resources(gpus=8), returns_output=True, settings=settings)
    assert isinstance(gang, GangOperator) and gang.stage_resources.nodes == 2
    assert (gang.pool, gang.pool_slots) == ("herd-gpu-pretrain", 16)  # one slot per GPU of the gang
    single = command_task("tokenizer", ["stage", "tokenizer"], Resources(), returns_output=True, settings=settings)
    assert isinstance(single, KubernetesPodOperator) and single.pool == "default_pool"
    assert isinstance(command_task("pretrain", ["stage", "pretrain"], Resources(gpus=8, nodes=3),
                                   settings=backend_settings({"HERD_BACKEND": "kubernetes"})), GangOperator)


def test_the_dag_runs_every_pretrain_task_as_a_gang(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("HERD_BACKEND", "kubernetes")
    monkeypatch.setenv("HERD_K8S_STAGE_NODES", "pretrain=2")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    from airflow.serialization.serialized_objects import DagSerialization

    dag = bag.dags["llama4_pipeline"]
    gangs = {t.task_id for t in dag.tasks if isinstance(t, GangOperator)}
    assert gangs and gangs == {t.task_id for t in dag.tasks if t.task_id.split(".")[-1] == "pretrain"}
    # The dag-processor stores the DAG serialized: the gang tasks must survive the round trip.
    stored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert {stored.get_task(task_id).task_type for task_id in gangs} == {"GangOperator"}


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


class FakeClock:
    """The trigger's clock, wound on by each poll: hours of waiting take a moment of real time."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> float:
        return self.seconds

    async def sleep(self, seconds: float) -> None:
        self.seconds += seconds
        await asyncio.sleep(0.05)


def _gang_operator(restarts: int, **env: str) -> GangOperator:
    settings = _settings(**{"HERD_K8S_GANG_RESTARTS": str(restarts), "HERD_K8S_NAMESPACE": "herd",
                            "HERD_K8S_GANG_POLL_SECONDS": "0.3", **env})
    return GangOperator(task_id="scout.pretrain", arguments=["--output", "s3://herd/artifacts/pretrain/x"],
                        stage_resources=Resources(cpu="1", memory="2Gi", nodes=2), settings=settings, module=CHECK)


async def _first_event(trigger: GangTrigger):
    async for event in trigger.run():
        return event.payload


def _defer(operator: GangOperator, try_number: int = 1) -> tuple[dict, GangTrigger]:
    from airflow.sdk.exceptions import TaskDeferred

    context = {"run_id": "manual__1", "ti": SimpleNamespace(try_number=try_number)}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(context)
    assert deferred.value.method_name == "resume"
    # The triggerer rebuilds the trigger from what it serialized, as after a triggerer restart.
    path, kwargs = deferred.value.trigger.serialize()
    assert path == "herd_airflow.gang.GangTrigger"
    return context, GangTrigger(**kwargs)


def _run(operator: GangOperator, cluster: LocalCluster, monkeypatch, try_number: int = 1):
    monkeypatch.setattr(GangTrigger, "clients", staticmethod(lambda conn_id: (cluster, cluster)))
    try:
        context, trigger = _defer(operator, try_number)
        return operator.resume(context, asyncio.run(_first_event(trigger)))
    finally:
        cluster.close()


def test_a_failed_node_restarts_the_whole_gang_and_the_output_comes_from_rank_0(tmp_path, monkeypatch, capsys):
    cluster = LocalCluster(tmp_path, faults={"a1": ["--fail-rank", "1", "--exit-code", "1"]})
    output = _run(_gang_operator(restarts=1), cluster, monkeypatch)
    assert output == "s3://herd/artifacts/pretrain/x"
    [gang] = [j["metadata"]["name"] for j in cluster.created]  # one JobSet: the restart is its own
    assert gang.startswith("herd-scout-pretrain-") and gang.endswith("-t1")
    log = capsys.readouterr().out  # the trigger's log, which Airflow writes into the task log
    assert "restarted the whole gang (restart 1, 1 counted" in log
    assert "[node 0] distcheck rank 0/2" in log and "[node 1] distcheck rank 1/2" in log
    assert cluster.deleted == [gang] and not cluster.jobsets  # deleted once its logs were read


def test_a_refused_config_fails_at_once_and_exhausted_restarts_fail_the_task(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    refused = LocalCluster(tmp_path, faults={r"a\d+": ["--fail-rank", "0", "--exit-code", "2"]})
    with pytest.raises(AirflowFailException, match="refused its config"):
        _run(_gang_operator(restarts=3), refused, monkeypatch)
    assert refused.deleted and len(refused.created) == 1
    broken = LocalCluster(tmp_path, faults={r"a\d+": ["--fail-rank", "1", "--exit-code", "3"]})
    with pytest.raises(RuntimeError, match="gang failed after 1 restarts.*exit 3"):
        _run(_gang_operator(restarts=1), broken, monkeypatch, try_number=2)
    assert [j["metadata"]["name"].rsplit("-", 1)[-1] for j in broken.created] == ["t2"]


def test_a_gang_whose_stage_is_not_needed_is_skipped_not_restarted(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    not_needed = LocalCluster(tmp_path, faults={r"a\d+": ["--fail-rank", "0", "--exit-code", str(SKIP_EXIT)]})
    with pytest.raises(AirflowSkipException, match="no selected stage needs it"):
        _run(_gang_operator(restarts=3), not_needed, monkeypatch)
    assert len(not_needed.created) == 1 and not not_needed.jobsets


def test_a_gang_kueue_holds_past_the_old_900_s_limit_waits_then_runs(tmp_path, monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(GangTrigger, "clock", clock)
    operator = _gang_operator(restarts=0, HERD_K8S_QUEUE="h100-training", HERD_K8S_GANG_POLL_SECONDS="60")
    cluster = LocalCluster(tmp_path, clock=clock, admit_at=3600.0)  # an hour in the queue
    assert _run(operator, cluster, monkeypatch) == "s3://herd/artifacts/pretrain/x"
    assert clock.seconds >= 3600 > operator.settings.startup_timeout_seconds
    assert cluster.created[0]["spec"]["suspend"] is True  # held by Kueue, then admitted whole
    log = capsys.readouterr().out
    assert "waiting in Kueue's queue" in log and "[node 1] distcheck rank 1/2" in log


def test_a_preempted_pod_restarts_the_gang_without_using_a_restart(tmp_path, monkeypatch, capsys):
    cluster = LocalCluster(tmp_path, preempt={1: 1})  # the first attempt loses node 1 to preemption
    assert _run(_gang_operator(restarts=0), cluster, monkeypatch) == "s3://herd/artifacts/pretrain/x"
    assert "restart 1, 0 counted against maxRestarts" in capsys.readouterr().out


def test_a_task_whose_worker_died_reattaches_to_its_running_gang(tmp_path, monkeypatch):
    cluster = LocalCluster(tmp_path)
    monkeypatch.setattr(GangTrigger, "clients", staticmethod(lambda conn_id: (cluster, cluster)))
    try:
        _defer(_gang_operator(restarts=0), try_number=1)  # the worker that created it is gone, and its try
        operator = _gang_operator(restarts=0)
        context, trigger = _defer(operator, try_number=2)
        assert len(cluster.created) == 1 and trigger.name == cluster.created[0]["metadata"]["name"]
        assert operator.resume(context, asyncio.run(_first_event(trigger))) == "s3://herd/artifacts/pretrain/x"
    finally:
        cluster.close()


def test_half_a_gang_gives_its_nodes_back_after_the_startup_timeout(tmp_path, monkeypatch):
    operator = _gang_operator(restarts=3, HERD_K8S_STARTUP_TIMEOUT="2")
    cluster = LocalCluster(tmp_path, capacity=1)  # node 0 starts and waits at the rendezvous; node 1 never lands
    with pytest.raises(RuntimeError, match="only 1 of 2 gang pods were scheduled within 2 s"):
        _run(operator, cluster, monkeypatch)
    assert len(cluster.created) == 1 and not cluster.jobsets  # no restart into the same shortage; JobSet deleted


def test_a_gang_whose_task_timed_out_is_deleted_not_left_training(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferralTimeout
    from airflow.sdk.bases.operator import TriggerFailureReason

    cluster = LocalCluster(tmp_path)
    monkeypatch.setattr(GangTrigger, "clients", staticmethod(lambda conn_id: (cluster, cluster)))
    try:
        operator = _gang_operator(restarts=0)
        context, _ = _defer(operator)
        assert cluster.jobsets
        with pytest.raises(TaskDeferralTimeout):
            operator.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, context)
        assert not cluster.jobsets and len(cluster.deleted) == 1
    finally:
        cluster.close()
