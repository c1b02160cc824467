"""MLflow: a parent run per pipeline run, a nested run per stage with its datasets, no run left running, system
metrics, and failing fast when the server is away."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from conftest import REPO, herd, output_of


def test_parent_and_nested_runs_with_params_tags_metrics_artifacts(udhr_subset, herd_home):
    mix = output_of(herd("stage", "datamix", "--run", "track-1", "--in", f"corpus={udhr_subset}"))
    output_of(herd("stage", "tokenizer", "--run", "track-1", "--in", f"mix={mix}", "--set", "tokenizer.vocab_size=1024"))

    from tasks.runtime import tracking

    client = tracking.client()
    parent = tracking.find_parent(client, "track-1")
    assert parent is not None
    children = client.search_runs(
        [tracking.experiment_id(client)], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_stage = {run.data.tags["herd.stage"]: run for run in children}
    assert set(by_stage) == {"datamix", "tokenizer"}
    datamix = by_stage["datamix"]
    assert datamix.info.status == "FINISHED"
    assert datamix.data.tags["herd.preset"] == "nano" and datamix.data.tags["herd.dag_run_id"] == "track-1"
    assert datamix.data.tags["herd.config_hash"] == mix.rsplit("/", 1)[-1]
    assert datamix.data.params["min_chars"] == "40" and datamix.data.params["input.corpus"] == str(udhr_subset)
    assert datamix.data.metrics["docs_in"] > 300 and datamix.data.metrics["languages_in_mix"] >= 12
    artifacts = {a.path for folder in ("", "reports", "plots") for a in client.list_artifacts(datamix.info.run_id, folder)}
    assert {"step.json", "reports/languages.csv", "reports/drops.csv", "plots/language_coverage.png"} <= artifacts
    tok_artifacts = {a.path for a in client.list_artifacts(by_stage["tokenizer"].info.run_id, "plots")}
    assert "plots/fertility.png" in tok_artifacts

    # Run by hand, outside a DAG: the first stage opened the parent and closed it; nothing is left running.
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert {run.info.status for run in client.search_runs([tracking.experiment_id(client)])} == {"FINISHED"}
    experiment = client.get_experiment(tracking.experiment_id(client))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert datamix.info.run_name == "datamix" and by_stage["tokenizer"].info.run_name == "tokenizer"


def _datasets(run) -> dict[str, tuple[str, str, str, dict]]:
    """A run's datasets by context: (name, digest, URI, profile)."""
    found = {}
    for item in run.inputs.dataset_inputs:
        context = {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]
        dataset = item.dataset
        found[context] = (dataset.name, dataset.digest, json.loads(dataset.source)["uri"],
                          json.loads(dataset.profile or "{}"))
    return found


def test_each_stage_logs_what_it_read_and_wrote_as_datasets_the_next_stage_shares(udhr_subset, herd_home):
    mix = output_of(herd("stage", "datamix", "--run", "data-1", "--in", f"corpus={udhr_subset}"))
    tokens = output_of(herd("stage", "tokenizer", "--run", "data-1", "--in", f"mix={mix}",
                            "--set", "tokenizer.vocab_size=1024"))

    from tasks.runtime import storage, tracking

    client = tracking.client()
    runs = {run.info.run_name: run for run in client.search_runs(
        [tracking.experiment_id(client)], filter_string="tags.`herd.kind` = 'stage'")}
    datamix, tokenizer = _datasets(runs["datamix"]), _datasets(runs["tokenizer"])
    assert datamix["corpus"][:3] == ("corpus", f"data:{storage.fingerprint(str(udhr_subset))}", str(udhr_subset))
    mix_hash = mix.rsplit("/", 1)[-1]
    assert datamix["output"] == ("datamix", mix_hash, mix, {"made_by_run": runs["datamix"].info.run_id})
    # The tokenizer read the mix the datamix run wrote: the same dataset, with the run that made it.
    assert tokenizer["mix"] == datamix["output"]
    assert tokenizer["output"][:3] == ("tokenizer", tokens.rsplit("/", 1)[-1], tokens)
    # The documented search: every run that read this mix.
    readers = client.search_runs([tracking.experiment_id(client)],
                                 filter_string=f"dataset.name = 'datamix' and dataset.digest = '{mix_hash}'")
    assert {run.info.run_name for run in readers} == {"datamix", "tokenizer"}


def test_a_stage_killed_by_sigterm_ends_failed_with_the_parent_it_opened(udhr_jsonl, herd_home):
    command = [sys.executable, "-m", "tasks.cli", "stage", "datamix", "--run", "stopped", "--in", f"corpus={udhr_jsonl}"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env=os.environ.copy())
    assert process.stderr is not None
    for line in process.stderr:
        if "datamix: reading" in line:
            break
    process.send_signal(signal.SIGTERM)  # what Airflow sends a task it stops, and Kubernetes a pod it deletes
    process.stderr.read()
    assert process.wait(timeout=60) == 128 + signal.SIGTERM

    from tasks.runtime import tracking

    client = tracking.client()
    parent = tracking.find_parent(client, "stopped")
    stage = client.search_runs([tracking.experiment_id(client)], filter_string="tags.`herd.stage` = 'datamix'")
    assert [run.info.status for run in stage] == ["FAILED"]
    assert parent is not None and parent.info.status == "FAILED"


def test_system_metrics_are_logged_for_a_stage_that_asks_unless_turned_off(herd_home, monkeypatch):
    from tasks.runtime import tracking

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    tags = {"herd.preset": "nano"}
    watched = tracking.StageRun.start("sysmetrics", "scout.sft", tags, {}, system_metrics=True)
    time.sleep(1.5)
    watched.end("FINISHED")
    monkeypatch.setenv("HERD_SYSTEM_METRICS", "0")
    quiet = tracking.StageRun.start("sysmetrics", "scout.dpo", tags, {}, system_metrics=True)
    time.sleep(1.0)
    quiet.end("FINISHED")

    client = tracking.client()
    logged = client.get_run(watched.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(logged)
    assert 0 < logged["system/system_memory_usage_megabytes"]
    assert not [key for key in client.get_run(quiet.run_id).data.metrics if key.startswith("system/")]


def test_unreachable_tracking_server_fails_fast_and_touches_nothing(udhr_subset, herd_home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    clock = time.monotonic()
    result = herd("stage", "datamix", "--run", "t", "--in", f"corpus={udhr_subset}",
                  env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, check=False)
    assert result.returncode == 1
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in result.stderr
    assert time.monotonic() - clock < 60
    assert not (herd_home / "artifacts").exists()


def test_a_plot_that_fails_is_a_warning_not_a_failed_stage(herd_home, caplog):
    from tasks.runtime import tracking

    client = tracking.client()
    run = tracking.StageRun(client, client.create_run(tracking.experiment_id(client)).info.run_id)

    def broken(figure):
        raise ValueError("no data to draw")

    run.log_plot("broken.png", broken)
    run.log_plot("fine.png", lambda figure: figure.add_subplot().plot([1, 2], [3, 4]))
    assert [a.path for a in client.list_artifacts(run.run_id, "plots")] == ["plots/fine.png"]
    assert "plot broken.png not drawn: no data to draw" in caplog.text
