"""A stage's task log outlives the process that ran it: Airflow's remote logging to S3, live.

The compose stack's configuration (docker-compose.yml: ``[logging] remote_logging`` to
``s3://herd/airflow-logs`` through connection ``herd_logs``, which holds only the endpoint, the
keys coming from the environment) on a real Airflow 3 (``live_airflow.py``) against a real S3
server on loopback (rclone, standing in for MinIO). The data-mix stage runs as a local process of
a LocalExecutor worker; when it has finished, its log is in the bucket. The local log folder is
then deleted, as a worker's disk is gone with its container or pod, and the REST API still
serves the stage's log, from the bucket.

    .venv/bin/python -m pytest -q tests/test_airflow_remote_logs.py

Needs the Amazon provider (apache-airflow-providers-amazon, in the ``airflow`` extra).
"""

from __future__ import annotations

import json
import shutil

import pytest
from live_airflow import LiveAirflow, ThrowawayPostgres

pytestmark = pytest.mark.slow
pytest.importorskip("airflow.providers.amazon.aws.log.s3_task_handler",
                    reason="remote logging to S3 needs apache-airflow-providers-amazon: pip install -e '.[airflow]'")

DAG_ID = "llama4_pipeline"
RUNS = f"/api/v2/dags/{DAG_ID}/dagRuns"
LOG_FOLDER = "s3://herd/airflow-logs"


@pytest.fixture(scope="module")
def airflow(udhr_subset, s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("live-airflow-remote-logs")
    endpoint = s3_server["AWS_ENDPOINT_URL_S3"]
    env = {
        "HERD_HOME": str(root / "herd-home"), "HERD_CORPUS_URI": str(udhr_subset),
        # The worker's S3 key, as in compose; the connection names the endpoint only.
        **{name: value for name, value in s3_server.items() if name != "AWS_ENDPOINT_URL_S3"},
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": LOG_FOLDER,
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "herd_logs",
        "AIRFLOW_CONN_HERD_LOGS": json.dumps({"conn_type": "aws",
                                              "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}),
    }
    with ThrowawayPostgres() as postgres, LiveAirflow(root, env, postgres.url) as live:
        live.wait_for_dag(DAG_ID)
        yield live


def _bucket_keys(s3_server: dict[str, str]) -> list[str]:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                          aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
                          config=Config(signature_version="s3v4"))
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="herd", Prefix="airflow-logs/")
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_stage_log_is_read_from_the_bucket_after_its_worker_and_local_log_are_gone(airflow, udhr_subset,
                                                                                      s3_server):
    assert airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
    conf = {"corpus": str(udhr_subset), "stages": ["datamix"]}
    response = airflow.api("POST", RUNS, json={"logical_date": None, "conf": conf})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    run = airflow.wait_for_run(DAG_ID, run_id, timeout=900)
    assert run["state"] == "success", airflow.logs()

    uploaded = [key for key in _bucket_keys(s3_server) if "task_id=datamix/" in key]
    assert uploaded, f"no datamix log in the bucket: {_bucket_keys(s3_server)}"

    # The worker's disk goes with its container or pod: only the bucket is left.
    local = airflow.home / "logs" / f"dag_id={DAG_ID}"
    assert local.is_dir()
    shutil.rmtree(local)

    log = airflow.api("GET", f"{RUNS}/{run_id}/taskInstances/datamix/logs/1",
                      headers={"Accept": "application/json"})
    assert log.status_code == 200, log.text
    text = log.text
    # The stage process's own lines, streamed by the operator: its output URI among them.
    assert "HERD_OUTPUT=" in text, text[-3000:]
    assert f"{LOG_FOLDER}/dag_id={DAG_ID}/" in text  # the source the API read it from
