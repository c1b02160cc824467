"""The whole pipeline end to end through Airflow (dag.test) on the embedded default, twice, then a retrain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from herd.pipeline import STAGES
from herd.stages.models import TEACHER
from conftest import REPO


def _demo(herd_home, *args: str, seed_corpus: str = "") -> subprocess.CompletedProcess:
    # The seed corpus (the problems stage's UDHR input) is the test's subset, not a fetched one.
    env = {**os.environ, "HERD_HOME": str(herd_home), **({"HERD_CORPUS_URI": seed_corpus} if seed_corpus else {})}
    for variable in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER"):
        env.pop(variable, None)  # the demo sets up its own embedded Airflow under HERD_HOME
    return subprocess.run([sys.executable, "-m", "tasks.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=2400)


def _outputs(stdout: str) -> dict[str, Path]:
    """Each stage's output folder from the demo's summary."""
    found = {}
    for line in stdout.splitlines():
        words = line.split()
        if words and words[-1].startswith("/") and ("computed" in line or "reused" in line):
            found[words[0]] = Path(words[-1])
    return found


@pytest.mark.slow
@pytest.mark.timeout(7200)  # three whole pipelines, 30-odd tasks each: a loaded 2-core machine needs the room
def test_dag_runs_data_stages_then_skips_them_then_retrains_from_the_champions(udhr_subset, herd_home, monkeypatch):
    # The teacher takes the students' nano shape: nano_behemoth's 94M parameters (374 MB of weights, 1.1 GB a
    # checkpoint with Adam's moments) would be written and read by a dozen tasks of each run, and nothing here
    # depends on the teacher being the larger model.
    args = ("--corpus", str(udhr_subset), "--set", "models.behemoth=nano", "--set", "tokenizer.vocab_size=1024",
            "--set", "pretrain.steps=4", "--set", "pretrain.seq_len=64", "--set", "pretrain.batch_size=2",
            "--set", "midtrain.steps=2", "--set", "midtrain.seq_len=128", "--set", "midtrain.batch_size=2",
            "--set", "midtrain.eval_lengths=[128,256]", "--set", "midtrain.eval_depths=[0.5]",
            "--set", "midtrain.eval_trials=2", "--set", "problems.count_arithmetic=20",
            "--set", "problems.count_strings=20", "--set", "problems.count_code=5",
            "--set", "problems.count_translate=10", "--set", "problems.count_language_id=10",
            "--set", "problems.count_continue=10", "--set", "sft.steps=2", "--set", "sft.eval_max_items=4",
            "--set", "sft.max_new_tokens=8", "--set", "sft.compare_unpruned=false", "--set", "rl.rounds=1",
            "--set", "rl.max_new_tokens=8", "--set", "dpo.steps=2", "--set", "dpo.prompts=2",
            "--set", "dpo.max_new_tokens=8", "--set", "guards.examples=400", "--set", "guards.buckets=4096",
            "--set", "safety.cyberseceval.limit=2", "--set", "safety.cyberseceval.max_new_tokens=8",
            "--set", "safety.cyberseceval.judge_max_new_tokens=4", "--set", "safety.goat.turns=1",
            "--set", "safety.goat.limit=2", "--set", "safety.goat.attacker_max_new_tokens=8")
    variants = sorted({spec.variant for spec in STAGES if spec.name == "gate"})
    # Tiny models fail their gates (their safety figures cannot be scored): the first run overrides them,
    # so that there are champions to retrain from.
    first = _demo(herd_home, *args, "--gate-override", *variants, "--override-reason", "tiny test models, no bar",
                  seed_corpus=str(udhr_subset))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert ": success in" in first.stdout
    assert first.stdout.count(" computed ") == len(STAGES)
    for variant in variants:
        assert f"herd-{variant:<13} candidate v1, champion v1" in first.stdout, first.stdout[-3000:]
    first_outputs = _outputs(first.stdout)

    second = _demo(herd_home, *args, seed_corpus=str(udhr_subset))
    assert second.returncode == 0, second.stderr[-5000:]
    assert second.stdout.count(" reused (computed by ") == len(STAGES)

    monkeypatch.setenv("HERD_HOME", str(herd_home))
    from tasks.runtime import tracking

    client = tracking.client()
    parents = client.search_runs([tracking.experiment_id(client)], filter_string="tags.`herd.kind` = 'pipeline'")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    # No run of either demo is left "running": every stage run and parent ended.
    assert "RUNNING" not in {run.info.status for run in client.search_runs([tracking.experiment_id(client)],
                                                                            max_results=1000)}
    for parent in parents:
        children = client.search_runs([tracking.experiment_id(client)],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        stages = sorted(c.data.tags["herd.stage"] for c in children)
        computed = parent.data.metrics["stages_computed"] == len(STAGES)
        assert stages == (sorted(spec.id for spec in STAGES) if computed else [])
        assert parent.data.params["datamix.min_chars"] == "40"

    retrain = _demo(herd_home, "--dag", "llama4_retrain", *args, seed_corpus=str(udhr_subset))
    assert retrain.returncode == 0, retrain.stdout[-3000:] + retrain.stderr[-5000:]
    assert "llama4_retrain run " in retrain.stdout and ": success in" in retrain.stdout
    outputs = _outputs(retrain.stdout)
    assert sorted(outputs) == sorted(spec.id for spec in STAGES)
    # The corpus and the problems did not change: their stages are reused. The tokenizer keeps the
    # champions' vocabulary (a new input), so it and every model stage after it compute again.
    reused = {"datamix", "problems", "guards"}
    assert {stage_id for stage_id in outputs if outputs[stage_id] == first_outputs[stage_id]} == reused
    final = {variant: "rl" if variant == TEACHER else "dpo" for variant in variants}
    tokenizer = json.loads((outputs["tokenizer"] / "step.json").read_text())
    assert tokenizer["inputs"]["base"] == str(first_outputs[f"{TEACHER}.rl"]), tokenizer["inputs"]
    for variant in variants:
        pretrain = json.loads((outputs[f"{variant}.pretrain"] / "step.json").read_text())
        assert pretrain["inputs"]["init"] == str(first_outputs[f"{variant}.{final[variant]}"]), pretrain["inputs"]
        gate = json.loads((outputs[f"{variant}.gate"] / "step.json").read_text())["metrics"]
        assert gate["model_version"] == "2"
        champion = "v2" if gate["verdict"] == "pass" else "v1"  # no override this time
        assert f"herd-{variant:<13} candidate v2, champion {champion}" in retrain.stdout, retrain.stdout[-3000:]


@pytest.mark.slow
def test_failing_stage_fails_the_run_and_closes_the_parent(herd_home, tmp_path, monkeypatch):
    result = _demo(herd_home, "--corpus", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert ": failed in" in result.stdout
    monkeypatch.setenv("HERD_HOME", str(herd_home))
    from tasks.runtime import tracking

    client = tracking.client()
    parents = client.search_runs([tracking.experiment_id(client)], filter_string="tags.`herd.kind` = 'pipeline'")
    assert [p.info.status for p in parents] == ["FAILED"]
