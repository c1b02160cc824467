"""A real Airflow 3 for the tests, run as a user runs it: four services, a database, a login.

The api-server, scheduler, dag-processor and triggerer are separate processes with their own
``AIRFLOW_HOME`` in a temporary folder and the repository's ``dags/``. The database is a
throwaway PostgreSQL database when one answers at ``HERD_TEST_POSTGRES_URL`` (default: the
local server, user ``postgres``; set it empty to skip PostgreSQL), else sqlite. The simple auth
manager holds one admin whose password the test writes itself. Stages run as local processes
(the embedded backend) with ``HERD_HOME`` under the same temporary folder.

    with ThrowawayPostgres() as postgres, LiveAirflow(tmp, {"HERD_HOME": ...}, postgres.url) as airflow:
        airflow.wait_for_dag("llama4_pipeline")
        airflow.api("POST", "/api/v2/dags/llama4_pipeline/dagRuns", json={"logical_date": None, "conf": {...}})
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import httpx

from conftest import descendants

REPO = Path(__file__).resolve().parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
SERVICES = ("dag-processor", "scheduler", "triggerer")
POSTGRES_URL = os.environ.get("HERD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
USER = "admin"
# Where a stage reads and writes: the services get these only from ``env``, never from the caller's shell.
HERD_VARIABLES = ("HERD_HOME", "MLFLOW_TRACKING_URI", "HERD_ARTIFACT_ROOT", "HERD_CORPUS_URI", "HERD_BACKEND")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def started(pid: int) -> str | None:
    """The process's start time (field 22 of its stat): tells a process from a later one with the same id."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class ThrowawayPostgres:
    """A database created for one Airflow and dropped after it; ``url`` is None when PostgreSQL is absent."""

    def __init__(self, admin_url: str = POSTGRES_URL) -> None:
        self.admin_url, self.name, self.url, self.why_not = admin_url, f"herd_airflow_{secrets.token_hex(4)}", None, ""

    def __enter__(self) -> Self:
        if not self.admin_url:
            self.why_not = "HERD_TEST_POSTGRES_URL is empty"
            return self
        try:
            import psycopg2
        except ImportError:
            self.why_not = "psycopg2 is not installed (apache-airflow-providers-postgres brings it)"
            return self
        try:
            connection = psycopg2.connect(self.admin_url, connect_timeout=3)
            connection.autocommit = True
            with connection.cursor() as cursor:  # not `with connection`: that opens a transaction
                cursor.execute(f"CREATE DATABASE {self.name}")
            connection.close()
        except psycopg2.Error as err:
            self.why_not = f"no PostgreSQL database at {self.admin_url}: {str(err).strip().splitlines()[0]}"
            return self
        base, _, _ = self.admin_url.rpartition("/")
        self.url = f"{base.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{self.name}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.url is None:
            return
        import psycopg2

        connection = psycopg2.connect(self.admin_url, connect_timeout=3)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        connection.close()


class LiveAirflow:
    """The four services on a free port of 127.0.0.1; ``api`` calls the REST API with the admin's token."""

    def __init__(self, root: Path, env: dict[str, str], database_url: str | None = None) -> None:
        self.root, self.home = root, root / "airflow"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self.database = "postgresql" if database_url else "sqlite"
        self.home.mkdir(parents=True, exist_ok=True)
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({USER: self.password}))
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in HERD_VARIABLES and not k.startswith("AIRFLOW")},
            **env,
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",  # two cores: more stage processes at once only thrash
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url or f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            # Every service signs and checks the task tokens with the same secret.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # The log servers bind every interface whatever the API host: ports of their own.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # The DAG files do not change during a test: parse once, with one parser.
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self._token: str | None = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 240) -> None:
        migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, capture_output=True, text=True,
                                 timeout=300, check=False)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate exited {migrate.returncode}:\n{migrate.stderr[-3000:]}")
        commands = {"api-server": ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                    **{service: [service] for service in SERVICES}}
        for name, arguments in commands.items():
            with (self.home / f"{name}.log").open("w") as log:
                self.processes[name] = subprocess.Popen([AIRFLOW, *arguments], env=self.env, cwd=REPO, stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            health = self._health()
            if health and all(health.get(part, {}).get("status") == "healthy"
                              for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")):
                return
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout:.0f} s: {self._health()}\n{self.logs()}")

    def _health(self) -> dict[str, Any] | None:
        try:
            return httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return None

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {process.returncode}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
                         for path in sorted(self.home.glob("*.log")))

    def token(self) -> str:
        if self._token is None:
            response = httpx.post(f"{self.url}/auth/token", json={"username": USER, "password": self.password},
                                  timeout=30)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self._check_alive()
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        """The DAG as the API sees it, once the dag-processor has parsed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.api("GET", f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return response.json()
            time.sleep(2)
        errors = self.api("GET", "/api/v2/importErrors").json()
        raise TimeoutError(f"{dag_id} not parsed after {timeout:.0f} s; import errors: {errors}\n{self.logs()}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(3)
        raise TimeoutError(f"run {run_id} still {run['state']} after {timeout:.0f} s\n{self.logs()}")

    def stop(self, grace: float = 5) -> None:
        """SIGTERM every service and everything below it (stage processes too), then SIGKILL what is left."""
        tree = {pid: started(pid) for process in self.processes.values() if process.poll() is None
                for pid in (process.pid, *descendants(process.pid))}
        self._signal(tree, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._signal(tree, signal.SIGKILL)
        for process in self.processes.values():
            process.wait(timeout=30)

    @staticmethod
    def _signal(tree: dict[int, str | None], signum: int) -> None:
        for pid, start in tree.items():
            if start is not None and started(pid) == start:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
