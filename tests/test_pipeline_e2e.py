"""The data stages end to end through Airflow (dag.test) on the embedded default, twice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


def _demo(herd_home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HERD_HOME": str(herd_home)}
    for variable in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER"):
        env.pop(variable, None)  # the demo sets up its own embedded Airflow under HERD_HOME
    return subprocess.run([sys.executable, "-m", "herd_airflow.demo", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_dag_runs_data_stages_then_skips_them(udhr_subset, herd_home, monkeypatch):
    args = ("--corpus", str(udhr_subset), "--set", "tokenizer.vocab_size=1024", "--set", "pretrain.steps=4",
            "--set", "pretrain.seq_len=64", "--set", "pretrain.batch_size=2")
    first = _demo(herd_home, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert ": success in" in first.stdout
    assert first.stdout.count(" computed ") == 3

    second = _demo(herd_home, *args)
    assert second.returncode == 0, second.stderr[-5000:]
    assert second.stdout.count(" reused (computed by ") == 3

    monkeypatch.setenv("HERD_HOME", str(herd_home))
    from tasks.runtime import tracking

    client = tracking.client()
    parents = client.search_runs([tracking.experiment_id(client)], filter_string="tags.`herd.kind` = 'pipeline'")
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    for parent in parents:
        children = client.search_runs([tracking.experiment_id(client)],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        stages = sorted(c.data.tags["herd.stage"] for c in children)
        assert stages == (["datamix", "pretrain", "tokenizer"] if parent.data.metrics["stages_computed"] == 3 else [])
        assert parent.data.params["datamix.min_chars"] == "40"


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
