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


def default_cyberseceval() -> str:
    """PurpleLlama's CyberSecEval files: ``HERD_CYBERSECEVAL_URI``, else ``$HERD_HOME/cyberseceval`` if it exists.

    Empty when neither is there: the stages that read them then record the benchmarks as skipped.
    """
    if os.environ.get("HERD_CYBERSECEVAL_URI"):
        return os.environ["HERD_CYBERSECEVAL_URI"]
    folder = herd_home() / "cyberseceval"
    return str(folder) if folder.is_dir() else ""


def mlflow_dir() -> Path:
    return herd_home() / "mlflow"
