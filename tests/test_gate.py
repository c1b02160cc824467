"""The gate: figures against their bars and the champion's values, the report, and the candidate's registration.

The gate stage runs through the stage runner against a real MLflow (sqlite and an artifact
folder under a HERD_HOME shared by the registry tests, so that the store is created once);
its upstream outputs are written as the contract says a complete output looks: a
``step.json`` with the stage's summary in ``metrics``, the ``_SUCCESS`` marker, and for the
final model, ``model.safetensors`` and ``hf/`` (a tiny Llama 4 and a real BPE tokenizer).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import uuid
from pathlib import Path

import pytest

from herd.config import ConfigError
from herd.pipeline import load_config
from herd.stages.gate import GateConfig, Threshold
from tasks.registry.verdict import FAIL, NOT_APPLICABLE, PASS, figures_of, judge, verdict

THRESHOLDS = {
    "sft.pruned_hard_pass1": {"min": 0.2},
    "sft.pruned_hard_loss": {"max": 3.0},
    "rl.last_pass_at_1": {"min": 0.1},
    "dpo.final_accuracy": {"min": 0.5},
    "midtrain.recall_at_trained_length": {"min": 0.0, "tolerance": 0.5},
}
GOOD = {"sft": {"pruned_hard_pass1": 0.4, "pruned_hard_loss": 2.0, "judge": "teacher"},
        "rl": {"last_pass@1": 0.3, "rounds": 6.0}, "dpo": {"final_accuracy": 0.7},
        "midtrain": {"recall_at_trained_length": 0.5}}


# The judgement, on plain numbers

def _bars(**bars) -> dict[str, Threshold]:
    return {figure.replace("__", "."): Threshold(**bar) for figure, bar in bars.items()}


def test_a_figure_fails_below_its_minimum_or_above_its_maximum():
    bars = _bars(sft__pass1={"min": 0.3}, sft__loss={"max": 2.0})
    rows = judge(bars, 0.0, {"sft.pass1": 0.29, "sft.loss": 2.0}, None, present={"sft"})
    assert [(r.figure, r.verdict) for r in rows] == [("sft.pass1", FAIL), ("sft.loss", PASS)]
    assert "below the minimum 0.3" in rows[0].reason and verdict(rows) == FAIL
    rows = judge(bars, 0.0, {"sft.pass1": 0.3, "sft.loss": 2.01}, None, present={"sft"})
    assert [r.verdict for r in rows] == [PASS, FAIL] and "above the maximum 2" in rows[1].reason


def test_a_figure_may_be_worse_than_the_champion_only_within_the_tolerance():
    bars = _bars(rl__pass={"min": 0.0}, rl__loss={"max": 10.0}, rl__kl={"max": 10.0, "tolerance": 1.0})
    champion = {"rl.pass": 0.50, "rl.loss": 1.0, "rl.kl": 0.1}
    rows = judge(bars, 0.05, {"rl.pass": 0.46, "rl.loss": 1.04, "rl.kl": 1.0}, champion, present={"rl"})
    assert [r.verdict for r in rows] == [PASS, PASS, PASS]  # kl is 0.9 worse, within its own tolerance of 1
    rows = judge(bars, 0.05, {"rl.pass": 0.44, "rl.loss": 1.06, "rl.kl": 1.2}, champion, present={"rl"})
    assert [r.verdict for r in rows] == [FAIL, FAIL, FAIL]
    assert rows[0].reason == "worse than the champion's 0.5 by 0.06 (tolerance 0.05)"
    assert (rows[0].champion, rows[0].candidate, rows[0].threshold, rows[0].bound) == (0.5, 0.44, 0.0, "min")
    # Better than the champion by any amount passes; a champion without the figure compares on the bar alone.
    rows = judge(bars, 0.0, {"rl.pass": 0.9, "rl.loss": 0.5, "rl.kl": 5.0}, {"rl.pass": 0.5}, present={"rl"})
    assert [r.verdict for r in rows] == [PASS, PASS, PASS] and rows[1].champion is None


def test_a_missing_or_non_finite_figure_fails_and_a_stage_not_fed_to_the_gate_is_not_applicable():
    bars = _bars(sft__pass1={"min": 0.0}, dpo__final_accuracy={"min": 0.5}, sft__loss={"max": 5.0})
    rows = judge(bars, 0.0, {"sft.loss": math.nan}, None, present={"sft", "rl"})
    assert [r.verdict for r in rows] == [FAIL, NOT_APPLICABLE, FAIL]
    assert rows[0].reason == "sft reported no pass1" and "not a finite number" in rows[2].reason
    assert verdict([r for r in rows if r.verdict != FAIL]) == PASS  # n/a alone never fails a gate


def test_figures_are_named_as_mlflow_names_metrics_and_only_numbers_count():
    figures = figures_of({"rl": {"last_pass@1": 0.25, "last_pass@4": 0.5, "variant": "scout", "cached": True}})
    assert figures == {"rl.last_pass_at_1": 0.25, "rl.last_pass_at_4": 0.5}


@pytest.mark.parametrize("gate, fragment", [
    ({"thresholds": {"sft.pass1": {"min": 0.1, "max": 0.9}}}, "exactly one"),
    ({"thresholds": {"sft.pass1": {}}}, "exactly one"),
    ({"thresholds": {"pass1": {"min": 0.1}}}, "not <stage>.<metric>"),
    ({"thresholds": {"sfft.pass1": {"min": 0.1}}}, "not 'sfft'"),
    ({"thresholds": {"sft.pass1": {"min": 0.1, "tolerance": -1}}}, "tolerance"),
    ({"variant_thresholds": {"llama": {"sft.pass1": {"min": 0.1}}}}, "unknown variant 'llama'"),
    ({"champion_tolerance": -0.1}, "champion_tolerance"),
    ({"override": True}, "override"),  # overriding is a promotion decision, never config
])
def test_bad_gate_config_is_refused(gate, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("nano", {f"gate.{key}": value for key, value in gate.items()})
    assert fragment in str(err.value)


def test_thresholds_move_the_gate_hash_and_variant_thresholds_replace_shared_ones():
    from herd.pipeline import stage
    from herd.versioning import output_hash, version_record

    spec = stage("gate", "scout")

    def digest(**overrides) -> str:
        config = load_config("nano", overrides)
        return output_hash(version_record(spec, config.gate, {"model": "m"}, "nano"))

    base = digest()
    assert digest(**{"gate.thresholds": {"sft.pruned_hard_pass1": {"min": 0.3}}}) != base
    assert digest(**{"gate.champion_tolerance": 0.1}) != base
    config = GateConfig(thresholds={"sft.a": Threshold(min=0.1), "rl.b": Threshold(max=2.0)},
                        variant_thresholds={"behemoth": {"sft.a": Threshold(min=0.5)}})
    assert config.for_variant("behemoth")["sft.a"].min == 0.5 and config.for_variant("scout")["sft.a"].min == 0.1
    assert config.registered_model("maverick") == "herd-maverick"


# The stage, with a real MLflow

def gate_home(tmp_path_factory) -> Path:
    """One HERD_HOME (MLflow store and artifacts) for the gate and registry tests: the store is created once."""
    return tmp_path_factory.getbasetemp() / "gate-registry-home"


def tiny_export(folder: Path) -> Path:
    """A tiny Llama 4 with a BPE tokenizer, written as a model stage writes it (``model.safetensors``, ``hf/``)."""
    if (folder / "hf" / "config.json").exists():
        return folder
    from conftest import tiny_model_dir

    from tasks.tokenizer import special_tokens as st

    texts = [f"Everyone has the right to life, liberty and security of person {i}; 12 + {i} = {12 + i}."
             for i in range(200)]
    return tiny_model_dir(texts, folder / "tokenizer", folder, eos=st.EOT, min_frequency=1)


def fake_output(root: Path, stage: str, variant: str, metrics: dict, model: Path | None = None,
                inputs: dict | None = None) -> str:
    """A complete stage output as the runner leaves one: files, ``step.json``, then ``_SUCCESS``."""
    digest = uuid.uuid4().hex[:16]
    folder = root / stage / variant / digest
    folder.mkdir(parents=True)
    if model is not None:
        shutil.copytree(model / "hf", folder / "hf")
        for name in ("model.safetensors", "model_config.json"):
            shutil.copyfile(model / name, folder / name)
    step = {"stage": stage, "stage_id": f"{variant}.{stage}", "variant": variant, "output_hash": digest,
            "output": str(folder), "metrics": metrics, "inputs": inputs or {}, "code_version": {"git": "test"},
            "finished_at": "2026-01-01T00:00:00+00:00", "mlflow_run_id": f"run-of-{stage}-{digest}"}
    (folder / "step.json").write_text(json.dumps(step))
    (folder / "_SUCCESS").write_text("{}")
    return str(folder)


class Gates:
    """Runs gates of one variant against one registered model, each test its own (a fresh name)."""

    def __init__(self, home: Path, export: Path, variant: str = "scout") -> None:
        self.home, self.export, self.variant = home, export, variant
        self.prefix = f"t{uuid.uuid4().hex[:6]}"
        self.name = f"{self.prefix}-{variant}"

    def config(self, **overrides):
        return load_config("nano", {"gate.model_name": f"{self.prefix}-{{variant}}", "gate.thresholds": THRESHOLDS,
                                    "gate.champion_tolerance": 0.05, **overrides})

    def inputs(self, figures: dict) -> dict[str, str]:
        """The gate's inputs as the pipeline wires them: the final model, and the stages it reads figures from."""
        from herd.pipeline import stage

        root = self.home / "upstream"
        final = "rl" if self.variant == "behemoth" else "dpo"
        sources = [name for name in stage("gate", self.variant).inputs if name != "model"]  # e.g. sft, rl, safety
        inputs = {name: fake_output(root, name, self.variant, figures.get(name, {})) for name in sources}
        inputs["model"] = fake_output(root, final, self.variant, figures.get(final, {}), model=self.export,
                                      inputs={"problems": str(root / "problems"), "model": "x"})
        return inputs

    def run(self, figures: dict, run_id: str = "r1", **overrides) -> tuple[dict, dict]:
        from tasks.runtime.step import execute

        out = execute("gate", run_id, self.config(**overrides), self.inputs(figures), str(self.home / "artifacts"),
                      variant=self.variant)
        return (json.loads((Path(out) / "step.json").read_text()),
                json.loads((Path(out) / "gate.json").read_text()))


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return tiny_export(tmp_path_factory.getbasetemp() / "gate-tiny-model")


@pytest.fixture
def gates(tmp_path_factory, export, monkeypatch) -> Gates:
    home = gate_home(tmp_path_factory)
    monkeypatch.setenv("HERD_HOME", str(home))
    return Gates(home, export)


def _with(figures: dict, changes: dict[tuple[str, str], float]) -> dict:
    changed = json.loads(json.dumps(figures))
    for (stage, metric), value in changes.items():
        changed[stage][metric] = value
    return changed


def test_a_first_candidate_is_judged_on_its_bars_registered_and_made_candidate(gates):
    from tasks.registry import versions
    from tasks.runtime import tracking

    step, report = gates.run(GOOD)
    metrics = step["metrics"]
    assert metrics["verdict"] == PASS and metrics["failed"] == [] and metrics["champion_version"] is None
    assert metrics["figures_checked"] == len(THRESHOLDS) and metrics["registered_model"] == gates.name
    assert {row["figure"]: row["candidate"] for row in report["rows"]}["rl.last_pass_at_1"] == 0.3
    assert all(row["champion"] is None for row in report["rows"])
    with open(Path(step["output"]) / "reports" / "gate.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["figure"] for r in table] == list(THRESHOLDS)
    assert set(table[0]) >= {"figure", "threshold", "champion", "candidate", "verdict", "reason"}

    client = tracking.client()
    version = client.get_model_version(gates.name, metrics["model_version"])
    assert version.aliases == ["candidate"] and versions.by_alias(client, gates.name, "champion") is None
    assert version.run_id == step["mlflow_run_id"] and version.source.endswith("/hf")
    assert version.tags["herd.gate.verdict"] == "pass" and version.tags["herd.dag_run_id"] == "r1"
    assert versions.figures(version) == {"sft.pruned_hard_pass1": 0.4, "sft.pruned_hard_loss": 2.0,
                                         "rl.last_pass_at_1": 0.3, "dpo.final_accuracy": 0.7,
                                         "midtrain.recall_at_trained_length": 0.5}
    assert version.tags[versions.MODEL_OUTPUT_TAG] == report["inputs"]["model"]
    assert version.tags["herd.input.problems"].endswith("/problems")
    # The runs that made the gate's inputs, as their step records name them.
    assert version.tags["herd.mlflow_run.model"] == f"run-of-dpo-{Path(report['inputs']['model']).name}"
    assert version.tags["herd.mlflow_run.sft"].startswith("run-of-sft-")
    artifacts = {a.path for a in client.list_artifacts(step["mlflow_run_id"])}
    assert {"hf", "reports", "gate"} <= artifacts
    hf_files = {Path(a.path).name for a in client.list_artifacts(step["mlflow_run_id"], "hf")}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= hf_files


def test_a_candidate_worse_than_the_champion_fails_the_gate_but_not_the_task(gates):
    from tasks.registry import versions
    from tasks.runtime import tracking

    first, _ = gates.run(GOOD)
    client = tracking.client()
    client.set_registered_model_alias(gates.name, "champion", first["metrics"]["model_version"])
    worse = _with(GOOD, {("sft", "pruned_hard_pass1"): 0.33, ("sft", "pruned_hard_loss"): 2.5,
                         ("rl", "last_pass@1"): 0.28})
    step, report = gates.run(worse, run_id="r2")
    assert step["metrics"]["verdict"] == FAIL
    assert step["metrics"]["failed"] == ["sft.pruned_hard_pass1", "sft.pruned_hard_loss"]  # rl: 0.02 worse, tolerated
    assert step["metrics"]["champion_version"] == first["metrics"]["model_version"]
    rows = {row["figure"]: row for row in report["rows"]}
    assert rows["sft.pruned_hard_pass1"]["champion"] == 0.4 and rows["sft.pruned_hard_pass1"]["candidate"] == 0.33
    assert rows["rl.last_pass_at_1"]["verdict"] == PASS
    # The candidate alias always moves; the champion stays where it was.
    assert str(versions.by_alias(client, gates.name, "candidate").version) == step["metrics"]["model_version"]
    assert str(versions.by_alias(client, gates.name, "champion").version) == first["metrics"]["model_version"]
    assert client.get_model_version(gates.name, step["metrics"]["model_version"]).tags["herd.gate.failed"] == \
        "sft.pruned_hard_pass1,sft.pruned_hard_loss"


def test_behemoth_is_gated_on_the_stages_it_has(gates):
    gates.variant, gates.name = "behemoth", f"{gates.prefix}-behemoth"
    figures = {"sft": {"pruned_hard_pass1": 0.4}, "rl": {"last_pass@1": 0.3}}  # no loss reported
    step, report = gates.run(figures)
    verdicts = {row["figure"]: row["verdict"] for row in report["rows"]}
    assert verdicts == {"sft.pruned_hard_pass1": PASS, "sft.pruned_hard_loss": FAIL, "rl.last_pass_at_1": PASS,
                        "dpo.final_accuracy": NOT_APPLICABLE, "midtrain.recall_at_trained_length": NOT_APPLICABLE}
    assert step["metrics"]["verdict"] == FAIL and step["metrics"]["figures_checked"] == 3
    assert step["metrics"]["registered_model"] == gates.name


def test_a_rerun_with_the_same_inputs_reuses_the_gate_and_registers_nothing_new(gates):
    from tasks.runtime import tracking
    from tasks.runtime.step import execute

    inputs = gates.inputs(GOOD)
    root = str(gates.home / "artifacts")
    first = execute("gate", "r1", gates.config(), inputs, root, variant="scout")
    again = execute("gate", "r2", gates.config(), inputs, root, variant="scout")
    forced = execute("gate", "r3", gates.config(), inputs, root, variant="scout", force=True)
    assert first == again == forced
    client = tracking.client()
    assert [str(v.version) for v in client.search_model_versions(f"name = '{gates.name}'")] == ["1"]
    stricter = execute("gate", "r4", gates.config(**{"gate.champion_tolerance": 0.01}), inputs, root, variant="scout")
    assert stricter != first  # a threshold is part of the gate's hash
