"""DAG integrity, trigger-time parameter validation, and every stage's pod rendered and validated offline."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from conftest import REPO
from herd.pipeline import STAGES
from herd.stages.gate import REQUIRED_BARS

DEFAULT_BARS = {figure: bar.model_dump(exclude_none=True) for figure, bar in REQUIRED_BARS.items()}

# Not boto3: the Amazon provider (remote task logs in the bucket) registers an s3 Asset URI handler, and Airflow
# loads every provider's handlers, the S3 hook and boto3 with them, when a DAG defines an Asset (llama4_retrain).
HEAVY = ["torch", "mlflow", "tokenizers", "transformers", "numpy", "pyarrow", "pandas", "matplotlib"]

PARSE_PROBE = f"""
import json, sys, time
started = time.monotonic()
from airflow.dag_processing.dagbag import DagBag
imported = time.monotonic()
bag = DagBag(dag_folder={str(REPO / 'dags')!r})
parsed = time.monotonic()
print(json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "dags": sorted(bag.dag_ids),
    "heavy": [m for m in {HEAVY!r} if m in sys.modules],
    "import_seconds": imported - started,
    "parse_seconds": parsed - imported,
}}))
"""


def _load_dag(monkeypatch=None, **env):
    from airflow.dag_processing.dagbag import DagBag

    if monkeypatch is not None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["llama4_pipeline"]  # get_dag() would consult the metadata DB


def test_dag_parses_without_heavy_imports():
    probe = subprocess.run([sys.executable, "-c", PARSE_PROBE], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"DAG parse: {report['parse_seconds']:.3f} s (importing Airflow's DagBag: {report['import_seconds']:.2f} s)")
    assert report["errors"] == {}
    assert "llama4_pipeline" in report["dags"]
    assert report["heavy"] == []


def test_dag_shape_tags_and_retries():
    dag = _load_dag()
    assert {"herd", "llama4"} <= set(dag.tags)
    assert dag.schedule is None or str(dag.timetable.summary) == "None"
    ids = {t.task_id for t in dag.tasks}
    promotions = {f"{spec.variant}.promote" for spec in STAGES if spec.name == "gate"}
    mix = {"datamix_shards", "datamix_map_arguments", "datamix_map", "datamix_reduce_arguments", "datamix_reduce"}
    assert ids == {"begin", *(spec.id for spec in STAGES), *promotions, "finish", "finish_failed", *mix}
    assert dag.get_task("tokenizer").upstream_task_ids == {"datamix"}
    # The data mix's first pass as mapped tasks: a map per shard, a reducer per key partition, then the stage.
    assert dag.get_task("datamix_shards").upstream_task_ids == {"begin"}
    assert dag.get_task("datamix_map").upstream_task_ids == {"datamix_map_arguments"}
    assert dag.get_task("datamix_reduce").upstream_task_ids == {"datamix_reduce_arguments", "datamix_map"}
    assert dag.get_task("datamix").upstream_task_ids == {"datamix_reduce"}
    assert dag.get_task("datamix").trigger_rule == "none_failed"  # runs when the maps expand to nothing
    assert "datamix.map_reduce=true" in dag.get_task("datamix").arguments
    # One model task per variant, each variant a task group; the students mid-train after their pretraining.
    assert {"behemoth.pretrain", "scout.pretrain", "maverick.pretrain"} <= ids
    assert dag.get_task("scout.midtrain").upstream_task_ids == {"scout.pretrain", "tokenizer"}
    assert dag.get_task("maverick.midtrain").upstream_task_ids == {"maverick.pretrain", "tokenizer"}
    assert "behemoth.midtrain" not in ids
    # Co-distillation: the teacher's top-k is cached once, after its pretraining; both students read it.
    assert dag.get_task("codistill").upstream_task_ids == {"behemoth.pretrain", "tokenizer"}
    for student in ("scout", "maverick"):
        assert dag.get_task(f"{student}.pretrain").upstream_task_ids == {"tokenizer", "behemoth.pretrain", "codistill"}
    assert dag.get_task("behemoth.pretrain").upstream_task_ids == {"tokenizer"}
    # Post-training: the students sft -> rl -> dpo from their mid-trained model, Behemoth sft -> rl from its own.
    assert dag.get_task("scout.sft").upstream_task_ids == {"scout.midtrain", "behemoth.pretrain", "tokenizer", "problems"}
    assert dag.get_task("behemoth.sft").upstream_task_ids == {"behemoth.pretrain", "tokenizer", "problems"}
    assert dag.get_task("maverick.dpo").upstream_task_ids == {"maverick.rl", "tokenizer", "problems"}
    assert "behemoth.dpo" not in ids and "behemoth.rl" in ids
    # Safety: the guards train once, from data they build; each variant's safety stage reads them and its final model.
    assert dag.get_task("guards").upstream_task_ids == {"begin"}
    assert dag.get_task("scout.safety").upstream_task_ids == {"scout.dpo", "guards"}
    assert dag.get_task("behemoth.safety").upstream_task_ids == {"behemoth.rl", "guards"}
    assert "cyberseceval={{ params.get('cyberseceval') or '' }}" in dag.get_task("maverick.safety").arguments
    # Each variant's final model is gated, then promoted or not; the run ends after every promotion.
    # A variant's safety stage, when the pipeline has one, feeds its gate too.
    safety = {variant: {f"{variant}.safety"} & ids for variant in ("behemoth", "scout")}
    assert dag.get_task("scout.gate").upstream_task_ids == {"scout.dpo", "scout.midtrain", "scout.sft", "scout.rl",
                                                            *safety["scout"]}
    assert dag.get_task("behemoth.gate").upstream_task_ids == {"behemoth.rl", "behemoth.sft", *safety["behemoth"]}
    assert promotions == {"behemoth.promote", "scout.promote", "maverick.promote"}
    assert dag.get_task("maverick.promote").upstream_task_ids == {"maverick.gate"}
    assert promotions <= dag.get_task("finish").upstream_task_ids
    assert set(dag.task_group.children) >= {"behemoth", "scout", "maverick"}
    arguments = dag.get_task("maverick.midtrain").arguments
    assert arguments[arguments.index("--variant") + 1] == "maverick"
    assert "model={{ ti.xcom_pull(task_ids='maverick.pretrain') }}" in arguments
    for spec in STAGES:
        assert dag.get_task(spec.id).retries >= 1


def _validated(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


@pytest.mark.parametrize("conf, fragment", [
    ({"preset": "huge"}, "huge"),
    ({"stages": ["datamix", "pretrian"]}, "pretrian"),
    ({"languages": ["english"]}, "english"),
    ({"force": "yes"}, "yes"),
    ({"corpus": "relative/path"}, "relative/path"),
    ({"overrides": {"datamix.min_charz": 3}}, "min_charz"),
    ({"overrides": {"datamix.min_chars": "many"}}, "many"),
    ({"overrides": {"datamix.unicode_form": "NFD"}}, "NFD"),
    ({"overrides": {"gate.champion_tolerance": "loose"}}, "loose"),
    # No override removes or loosens a required gate bar or raises a tolerance past its cap.
    ({"overrides": {"gate.thresholds": {}}}, "'sft.pruned_hard_pass1' is a required property"),
    ({"overrides": {"gate.champion_tolerance": 1e9}}, "is greater than the maximum of 0.1"),
    ({"overrides": {"gate.variant_thresholds": {"scout": {"safety.goat_asr": {"max": 2}}}}},
     "2 is greater than the maximum of 1.0"),
    ({"overrides": {"gate.thresholds": {**DEFAULT_BARS, "rl.last_pass_at_1": {"min": -1}}}},
     "-1 is less than the minimum of 0.0"),
    ({"overrides": {"gate.thresholds": {**DEFAULT_BARS, "safety.goat_asr": {"min": 0}}}}, "'max' is a required property"),
    ({"overrides": {"safety.goat.turnz": 2}}, "turnz"),  # a nested section's fields are named one by one
    ({"overrides": {"safety.goat.turns": 0}}, "minimum"),
    ({"gate_override": {"variants": ["scout"], "reason": ""}}, "minLength"),
    ({"gate_override": {"variants": ["llama"], "reason": "because the figures are fine"}}, "llama"),
])
def test_bad_params_are_refused_at_trigger(conf, fragment):
    from airflow.exceptions import ParamValidationError

    dag = _load_dag()
    with pytest.raises(ParamValidationError) as err:
        _validated(dag, conf)
    assert fragment in str(err.value)


def test_good_params_pass():
    dag = _load_dag()
    values = _validated(dag, {"preset": "small", "languages": ["eng", "fra"], "stages": ["tokenizer"],
                              "overrides": {"datamix.min_chars": 60, "tokenizer.vocab_size": 4096,
                                            "gate.thresholds": {**DEFAULT_BARS, "safety.goat_asr": {"max": 0.2},
                                                                "sft.pruned_hard_loss": {"max": 3, "tolerance": 1}},
                                            "gate.variant_thresholds": {"scout": {"rl.last_pass_at_1": {"min": 0.3}}},
                                            "safety.goat.turns": 2, "safety.cyberseceval.limit": 5},
                              "corpus": "s3://bucket/raw/",
                              "gate_override": {"variants": ["scout"], "reason": "FRR regression accepted, ticket 42"}})
    assert values["preset"] == "small" and values["overrides"]["datamix.min_chars"] == 60
    assert values["gate_override"]["variants"] == ["scout"]


def test_stage_arguments_render_from_params():
    from herd_airflow.factory import overrides_json, stage_arguments
    from herd.pipeline import stage
    from jinja2 import Environment

    params = {"preset": "nano", "force": False, "stages": ["tokenizer"], "corpus": "", "languages": ["eng"],
              "overrides": {"datamix.min_chars": 60}}
    jinja = Environment()
    rendered = [jinja.from_string(arg).render(params=params, run_id="r1", herd_overrides=overrides_json)
                for arg in stage_arguments(stage("datamix"))]
    assert rendered[:4] == ["stage", "datamix", "--run", "r1"]
    assert json.loads(rendered[rendered.index("--overrides") + 1]) == {
        "datamix.languages": ["eng"], "datamix.min_chars": 60}
    assert "--reuse-only=True" in rendered and "--force=False" in rendered
    assert "--skip-if-missing=False" in rendered  # the selected tokenizer needs the data mix
    assert rendered[-2:] == ["--in", "corpus="]


@pytest.mark.parametrize("selected, stage_id, skip", [
    (["tokenizer"], "datamix", False),             # the tokenizer reads the mix
    (["datamix", "tokenizer"], "behemoth.pretrain", True),  # nothing selected follows pretraining
    (["sft"], "scout.pretrain", False),            # sft follows it, through midtrain
    (["sft"], "guards", True),                     # guards feed only safety and the gate
    (["gate"], "guards", False),
])
def test_a_left_out_stage_is_skipped_only_when_no_selected_stage_needs_it(selected, stage_id, skip):
    from jinja2 import Environment

    from herd.pipeline import STAGES_BY_ID
    from herd_airflow.factory import overrides_json, stage_arguments

    params = {"preset": "nano", "force": False, "stages": selected, "corpus": "", "languages": [], "overrides": {}}
    rendered = [Environment().from_string(arg).render(params=params, run_id="r1", herd_overrides=overrides_json,
                                                      ti=None)
                for arg in stage_arguments(STAGES_BY_ID[stage_id]) if "xcom_pull" not in arg]
    assert f"--skip-if-missing={skip}" in rendered


def test_downstream_names_follow_the_pipeline_through_every_variant():
    from herd.pipeline import downstream_names

    assert downstream_names("datamix")[:2] == ["tokenizer", "pretrain"]
    assert "datamix" not in downstream_names("datamix")
    assert set(downstream_names("scout.midtrain")) == {"sft", "rl", "dpo", "safety", "gate"}
    assert downstream_names("scout.gate") == []


def test_text_params_left_empty_do_not_block_the_trigger_form():
    """The UI requires every field whose type does not allow null, and keeps Trigger greyed out while one is
    empty; a field the user clears arrives as null and must mean "empty", not the input "None"."""
    from jinja2 import Environment

    from herd.pipeline import stage
    from herd_airflow.factory import overrides_json, stage_arguments

    dag = _load_dag()
    empty_by_default = [name for name in dag.params if dag.params.get_param(name).value == ""]
    assert "corpus" in empty_by_default
    for name in empty_by_default:
        assert "null" in dag.params.get_param(name).schema["type"], name
    params = {"preset": "nano", "force": False, "stages": ["datamix"], "corpus": None, "languages": [],
              "overrides": {}}
    rendered = [Environment().from_string(arg).render(params=params, run_id="r1", herd_overrides=overrides_json)
                for arg in stage_arguments(stage("datamix"))]
    assert rendered[-2:] == ["--in", "corpus="]
