"""The retrain and evaluate DAGs: schedule, wiring, parameters refused at trigger, and an evaluation run through Airflow."""

from __future__ import annotations

import copy
import os

import pytest
from conftest import REPO, herd
from jinja2 import Environment
from test_gate import GOOD, Gates, gate_home, tiny_export

from herd.pipeline import STAGES
from herd.stages.models import VARIANTS


def _bag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="module")
def bag():
    return _bag()


def _validated(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def test_retrain_runs_weekly_and_when_the_corpus_asset_is_updated(bag):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    dag = bag.dags["llama4_retrain"]
    assert isinstance(dag.schedule, AssetOrTimeSchedule)
    timetable = dag.schedule.timetable
    assert isinstance(timetable, CronTriggerTimetable) and timetable.expression == "0 3 * * 1"
    assert [asset.uri for asset in dag.schedule.asset_condition.objects] == ["herd://corpus/"]
    assert {"herd", "llama4", "retrain"} <= set(dag.tags) and dag.max_active_runs == 1 and not dag.catchup


def test_retrain_schedule_and_corpus_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HERD_RETRAIN_CRON", "30 1 * * *")
    monkeypatch.setenv("HERD_RETRAIN_CORPUS", "s3://corpora/raw/")
    monkeypatch.setenv("HERD_RETRAIN_PRESET", "small")
    dag = _bag().dags["llama4_retrain"]
    assert dag.schedule.timetable.expression == "30 1 * * *"
    assert [asset.uri for asset in dag.schedule.asset_condition.objects] == ["s3://corpora/raw"]
    assert dag.params["corpus"] == "s3://corpora/raw/" and dag.params["preset"] == "small"


def test_a_bad_cron_is_an_import_error_not_a_silent_default(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("HERD_RETRAIN_CRON", "every monday")
    bag = DagBag(dag_folder=str(REPO / "dags" / "llama4_retrain.py"))
    assert "llama4_retrain" not in bag.dags and "every monday" in str(bag.import_errors)


def test_retrain_continues_each_variant_from_its_champion_with_the_champions_tokenizer(bag):
    dag = bag.dags["llama4_retrain"]
    pipeline = bag.dags["llama4_pipeline"]
    stage_ids = {spec.id for spec in STAGES}
    assert stage_ids <= {t.task_id for t in dag.tasks}
    assert {t.task_id for t in dag.tasks} - stage_ids == {
        "begin", "finish", "finish_failed", "tokenizer_base",
        "datamix_shards", "datamix_map_arguments", "datamix_map", "datamix_reduce_arguments", "datamix_reduce",
        *(f"{v}.champion" for v in VARIANTS), *(f"{v}.promote" for v in VARIANTS)}
    for spec in STAGES:  # the same graph as the pipeline's, plus where each stage's champion comes from
        extra = dag.get_task(spec.id).upstream_task_ids - pipeline.get_task(spec.id).upstream_task_ids
        assert extra == ({f"{spec.variant}.champion"} if spec.name == "pretrain" else
                         {"tokenizer_base"} if spec.name == "tokenizer" else set()), spec.id
    arguments = dag.get_task("maverick.pretrain").arguments
    assert "init={{ ti.xcom_pull(task_ids='maverick.champion') or '' }}" in arguments
    assert "base={{ ti.xcom_pull(task_ids='tokenizer_base') or '' }}" in dag.get_task("tokenizer").arguments
    assert dag.get_task("scout.champion").arguments[:3] == ["registry", "champion", "scout"]
    assert dag.get_task("tokenizer_base").arguments[:5] == ["registry", "champion", *VARIANTS]
    assert dag.get_task("scout.promote").upstream_task_ids == {"scout.gate"}
    # In the pipeline DAG the same inputs come from (absent) params: empty, so the stages start from scratch.
    assert "init={{ params.get('init') or '' }}" in pipeline.get_task("scout.pretrain").arguments

    class TI:
        def __init__(self, value):
            self.value = value

        def xcom_pull(self, task_ids):
            return self.value

    init = next(a for a in arguments if a.startswith("init="))
    assert Environment().from_string(init).render(ti=TI(None)) == "init="
    assert Environment().from_string(init).render(ti=TI("s3://b/dpo/maverick/abc")) == "init=s3://b/dpo/maverick/abc"


def test_promotion_arguments_render_the_override_for_its_variant_only(bag):
    promote = bag.dags["llama4_retrain"].get_task("scout.promote").arguments
    params = {"gate_override": {"variants": ["scout"], "reason": "accepted: ticket 42"}}

    class Run:
        triggering_user_name = "ana"

    rendered = [Environment().from_string(a).render(params=params, run_id="r", dag_run=Run(),
                                                    ti=type("TI", (), {"xcom_pull": lambda self, task_ids: "g"})())
                for a in promote]
    assert rendered == ["registry", "promote", "--run", "r", "--gate=g", "--override=True",
                        "--override-reason=accepted: ticket 42", "--override-by=ana"]
    maverick = bag.dags["llama4_retrain"].get_task("maverick.promote").arguments
    assert Environment().from_string(maverick[5]).render(params=params) == "--override=False"


@pytest.mark.parametrize("dag_id, conf, fragment", [
    ("llama4_evaluate", {"model": "herd scout"}, "herd scout"),
    ("llama4_evaluate", {"model": ""}, "model"),
    ("llama4_evaluate", {"version": "0"}, "'0'"),
    ("llama4_evaluate", {"version": "v 3"}, "v 3"),
    ("llama4_evaluate", {"version": 3}, "3"),
    ("llama4_evaluate", {"problems": "relative/problems"}, "relative/problems"),
    ("llama4_evaluate", {"overrides": {"sft.eval_max_itemz": 4}}, "eval_max_itemz"),
    ("llama4_retrain", {"preset": "huge"}, "huge"),
    ("llama4_retrain", {"gate_override": {"variants": ["scout"], "reason": "ok"}}, "minLength"),
    ("llama4_retrain", {"corpus": "relative/path"}, "relative/path"),
])
def test_bad_params_are_refused_at_trigger(bag, dag_id, conf, fragment):
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as err:
        _validated(bag.dags[dag_id], conf)
    assert fragment in str(err.value)


def test_evaluate_params_take_a_version_number_or_an_alias(bag):
    dag = bag.dags["llama4_evaluate"]
    assert dag.schedule is None or str(dag.timetable.summary) == "None"
    for version in ("champion", "candidate", "12"):
        assert _validated(dag, {"model": "herd-maverick", "version": version})["version"] == version
    assert _validated(dag, {"problems": "s3://bucket/problems/abc"})["problems"] == "s3://bucket/problems/abc"
    assert dag.get_task("evaluate").upstream_task_ids == {"begin"}


@pytest.fixture
def gates(tmp_path_factory, monkeypatch) -> Gates:
    home = gate_home(tmp_path_factory)
    monkeypatch.setenv("HERD_HOME", str(home))
    return Gates(home, tiny_export(tmp_path_factory.getbasetemp() / "gate-tiny-model"))


def test_a_missing_version_or_alias_is_refused_with_what_is_there(gates):
    gates.run(GOOD)
    home = gates.home
    result = herd("registry", "evaluate", "--run", "e", "--model", gates.name, "--version", "champion",
                  env={"HERD_HOME": str(home)}, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"registered model '{gates.name}' has no alias 'champion' (aliases: candidate)" in result.stderr


@pytest.mark.slow
def test_evaluate_dag_runs_on_a_registered_tiny_model(gates):
    """Airflow runs the DAG (dag.test, each task a local process) against the registry a gate wrote."""
    from tasks.demo import migrate
    from tasks.problems.item import make_problem
    from tasks.registry.promote import promote
    from tasks.runtime import tracking

    step, _ = gates.run(GOOD)
    client = tracking.client()
    promote(client, step["output"], "r1")
    problems = gates.home / "eval-problems"
    problems.mkdir(exist_ok=True)
    items = [make_problem("arithmetic", 1, f"What is {a} + 1?", str(a + 1), "exact", {"answer": str(a + 1)})
             for a in range(3)]
    (problems / "eval.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in items))
    # Migrate the database this process's Airflow uses, whatever home it read when first imported.
    from airflow import settings
    from airflow.configuration import conf

    migrate({"AIRFLOW_HOME": os.environ["AIRFLOW_HOME"],
             "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conf.get("database", "sql_alchemy_conn")})
    settings.dispose_orm()
    settings.configure_orm()
    dag = _bag().dags["llama4_evaluate"]
    run = dag.test(run_conf={"model": gates.name, "version": "champion", "problems": str(problems),
                             "overrides": {"sft.eval_max_items": 3, "sft.max_new_tokens": 4}})
    assert str(run.state) == "success"
    version = client.get_model_version(gates.name, step["metrics"]["model_version"])
    assert version.tags["herd.eval.items"] == "3" and version.tags["herd.eval.problems"] == str(problems)
    evaluation = client.get_run(version.tags["herd.eval.mlflow_run"])
    assert evaluation.data.tags["herd.run_id"] == run.run_id and evaluation.data.metrics["eval/items"] == 3
    parent = tracking.find_parent(client, run.run_id)
    assert parent is not None and parent.info.status == "FINISHED"


def test_every_retrain_and_evaluate_task_renders_a_valid_pod(monkeypatch):
    import kubernetes_validate
    from test_kubernetes_pods import KUBERNETES_VERSION, _assert_restricted, _pods, _render

    monkeypatch.setenv("HERD_BACKEND", "kubernetes")
    monkeypatch.setenv("HERD_K8S_IMAGE", "registry.internal/herd-trainer:0.1.0")
    bag = _bag()
    for dag_id in ("llama4_retrain", "llama4_evaluate"):
        for task in _pods(bag.dags[dag_id]):
            manifest = _render(task)
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
            _assert_restricted(manifest)
    # Tasks whose output the next ones read hand it over through the XCom file.
    for task_id in ("scout.champion", "tokenizer_base", "scout.promote"):
        args = _render(bag.dags["llama4_retrain"].get_task(task_id))["spec"]["containers"][0]["args"]
        assert args[0] == "registry" and args[-2:] == ["--xcom-file", "/dev/termination-log"]
    evaluate = _render(bag.dags["llama4_evaluate"].get_task("evaluate"))["spec"]["containers"][0]
    # A GPU pod runs through herd launch, one worker per GPU: here one.
    assert evaluate["args"][:4] == ["launch", "--", "registry", "evaluate"]
    assert evaluate["resources"]["limits"]["nvidia.com/gpu"] == "1"
