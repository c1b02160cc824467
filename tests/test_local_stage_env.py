"""The local backend hands a stage process only what a stage reads: Airflow's secrets stay in the worker."""

from __future__ import annotations

import json
import sys

from herd_airflow.local import LocalStageOperator, stage_environment

WORKER_SECRETS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:db-password@postgres:5432/airflow",
    "AIRFLOW__CORE__FERNET_KEY": "fernet-key",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret",
    "AIRFLOW__API__SECRET_KEY": "api-secret",
    "AIRFLOW_CONN_HERD_LOGS": '{"conn_type": "aws"}',
    "MINIO_ROOT_PASSWORD": "root-password",
    "POSTGRES_PASSWORD": "postgres-password",
    "JUDGE_API_KEY": "judge-key",
}
STAGE_NEEDS = {
    "HERD_HOME": "/tmp/herd", "HERD_ARTIFACT_ROOT": "s3://herd/artifacts", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "MLFLOW_TRACKING_USERNAME": "herd", "MLFLOW_TRACKING_PASSWORD": "mlflow-password",
    "AWS_ENDPOINT_URL_S3": "http://minio:9000", "AWS_ACCESS_KEY_ID": "herd-app", "AWS_SECRET_ACCESS_KEY": "app-secret",
    "PATH": "/usr/bin:/bin", "HOME": "/home/airflow", "CUDA_VISIBLE_DEVICES": "0", "NCCL_DEBUG": "WARN",
}


def test_airflow_secrets_are_dropped_and_stage_settings_kept():
    env = stage_environment({**WORKER_SECRETS, **STAGE_NEEDS})
    assert not set(WORKER_SECRETS) & set(env)
    assert STAGE_NEEDS.items() <= env.items()
    assert env["PYTHONUNBUFFERED"] == "1"


def test_a_variable_named_in_herd_stage_env_is_passed_on():
    env = stage_environment({**WORKER_SECRETS, **STAGE_NEEDS, "HERD_STAGE_ENV": " JUDGE_API_KEY ,"})
    assert env["JUDGE_API_KEY"] == "judge-key"
    assert "MINIO_ROOT_PASSWORD" not in env


def test_the_stage_process_sees_the_filtered_environment(tmp_path, monkeypatch):
    # A stand-in interpreter: reports the names it was started with as the stage's output line.
    probe = tmp_path / "python"
    probe.write_text("#!/bin/sh\n/usr/bin/env python3 -c 'import json, os; "
                     "print(\"HERD_OUTPUT=\" + json.dumps(sorted(os.environ)))'\n")
    probe.chmod(0o755)
    for name, value in {**WORKER_SECRETS, **STAGE_NEEDS}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", f"/usr/bin:/bin:{tmp_path}")
    monkeypatch.setattr(sys, "executable", str(probe))
    names = set(json.loads(LocalStageOperator(task_id="datamix", arguments=["stage", "datamix"]).execute({})))
    assert not set(WORKER_SECRETS) & names
    assert set(STAGE_NEEDS) <= names
