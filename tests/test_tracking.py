"""MLflow: a parent run per pipeline run, a nested run per stage, and failing fast when the server is away."""

from __future__ import annotations

import socket
import time

from conftest import herd, output_of


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
