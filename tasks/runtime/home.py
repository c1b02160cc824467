"""The embedded default's locations, all under ``HERD_HOME`` (default ``./.herd``)."""

from __future__ import annotations

import os
from pathlib import Path


def herd_home() -> Path:
    return Path(os.environ.get("HERD_HOME", ".herd")).resolve()


def artifact_root() -> str:
    return os.environ.get("HERD_ARTIFACT_ROOT") or str(herd_home() / "artifacts")


def default_corpus() -> str:
    return os.environ.get("HERD_CORPUS_URI") or str(herd_home() / "corpus" / "udhr")


def mlflow_dir() -> Path:
    return herd_home() / "mlflow"
