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


# PurpleLlama's CyberSecEval prompt-injection, MITRE false-refusal and interpreter sets
# (MIT, ~1 MB), kept in the repository so a checkout evaluates without a download.
BUNDLED_CYBERSECEVAL = Path(__file__).resolve().parents[2] / "data" / "cyberseceval"


def default_cyberseceval() -> str:
    """PurpleLlama's CyberSecEval files: ``HERD_CYBERSECEVAL_URI``, else ``$HERD_HOME/cyberseceval``, else the
    copy in the repository's ``data/cyberseceval``, whichever exists first.

    Empty when none is there (an installed package without the repository): the stages that
    read them then record the benchmarks as skipped.
    """
    if os.environ.get("HERD_CYBERSECEVAL_URI"):
        return os.environ["HERD_CYBERSECEVAL_URI"]
    for folder in (herd_home() / "cyberseceval", BUNDLED_CYBERSECEVAL):
        if folder.is_dir():
            return str(folder)
    return ""


def mlflow_dir() -> Path:
    return herd_home() / "mlflow"
