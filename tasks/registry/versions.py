"""herd's models in the MLflow Model Registry: one registered model per variant, aliases ``candidate`` and ``champion``.

    client = tracking.client()
    version = register(client, "herd-scout", gate_run_id, Path(".../dpo/<hash>/hf"), tags)  # an MLflow model
    move_alias(client, "herd-scout", CANDIDATE, version.version)
    champion = by_alias(client, "herd-scout", CHAMPION)        # None when there is none
    folder = download(client, champion, Path("/tmp/champion"))  # hf/: transformers and tasks.model.hf load it
    mlflow.pyfunc.load_model("models:/herd-scout@champion")    # or `mlflow models serve -m` the same URI

A version's source is an MLflow model logged by the gate's MLflow run (``models:/<model_id>``):
a pyfunc model whose artifact is the ``hf/`` folder (Hugging Face weights, selection bias,
config and tokenizer), with a signature and an input example (:mod:`tasks.registry.serving`).
So the registry holds the model itself, not a pointer into herd's artifact root, and MLflow
can load and serve it. Its tags carry the provenance (config hash, DAG run, every input
stage's output URI) and the gated figures (``herd.figure.<stage>.<metric>``), which is what
the next gate compares a candidate with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
FIGURE_TAG = "herd.figure."
GATE_HASH_TAG = "herd.gate_hash"
MODEL_OUTPUT_TAG = "herd.output.model"


class RegistryError(RuntimeError):
    """A registered model, version or alias that is not there."""


def _not_found(err: Exception) -> bool:
    return getattr(err, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def by_alias(client, name: str, alias: str):
    """The version ``alias`` points at, or None (no such alias, or no such registered model)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if _not_found(err):
            return None
        raise


def resolve(client, name: str, version_or_alias: str):
    """A version by number (``"3"``) or alias (``"champion"``); RegistryError naming what is missing."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if _not_found(err):
            raise RegistryError(f"no registered model {name!r} in the MLflow Model Registry") from None
        raise
    if version_or_alias.isdigit():
        try:
            return client.get_model_version(name, version_or_alias)
        except MlflowException as err:
            if _not_found(err):
                raise RegistryError(f"registered model {name!r} has no version {version_or_alias}") from None
            raise
    found = by_alias(client, name, version_or_alias)
    if found is None:
        aliases = ", ".join(sorted(client.get_registered_model(name).aliases)) or "none"
        raise RegistryError(f"registered model {name!r} has no alias {version_or_alias!r} (aliases: {aliases})")
    return found


def figures(version) -> dict[str, float]:
    """The gated figures recorded on a version (``herd.figure.*`` tags)."""
    values = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(FIGURE_TAG):
            try:
                values[key[len(FIGURE_TAG):]] = float(value)
            except ValueError:
                log.warning("tag %s=%r on %s v%s is not a number; ignored", key, value, version.name, version.version)
    return values


def _ensure_registered_model(client, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=description)
    except MlflowException as err:
        if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise


def register(client, name: str, run_id: str, hf_dir: Path, tags: dict[str, Any], description: str = ""):
    """A new version of ``name``: ``hf_dir`` logged by run ``run_id`` as an MLflow model; the same version again
    if one with the same ``herd.gate_hash`` tag exists (a retried or forced gate registers once)."""
    _ensure_registered_model(client, name,
                             description or f"herd's {name}: Llama 4, an MLflow pyfunc over its Hugging Face files")
    digest = tags.get(GATE_HASH_TAG)
    if digest:
        existing = client.search_model_versions(f"name = '{name}' and tags.`{GATE_HASH_TAG}` = '{digest}'")
        if existing:
            version = existing[0]
            log.info("registry: %s v%s already holds gate output %s", name, version.version, digest)
            for key, value in tags.items():
                client.set_model_version_tag(name, version.version, key, str(value))
            return client.get_model_version(name, version.version)
    from tasks.registry import serving

    tags = {key: str(value) for key, value in tags.items()}
    logged = serving.log_model(client, run_id, hf_dir, name, tags)
    source = f"models:/{logged.model_id}"
    with _global_tracking_uri(client.tracking_uri):
        version = client.create_model_version(name, source, run_id=run_id, tags=tags,
                                              description=description or None, model_id=logged.model_id)
    log.info("registry: registered %s v%s from %s", name, version.version, source)
    return version


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """mlflow's global tracking URI set to ``uri`` while needed: a database registry looks the logged model of a
    ``models:/<model_id>`` source up through it, not through the client's URI (mlflow's own TODO says so)."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    if mlflow.get_tracking_uri() == uri:  # MLFLOW_TRACKING_URI says so already: a server, or a set store
        yield
        return
    # Only herd's embedded store gets here, where MLFLOW_TRACKING_URI is unset; setting the global URI sets
    # that variable too, and putting it back unsets it.
    with _use_tracking_uri(uri):
        yield


def move_alias(client, name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version``; returns the version it pointed at before (None if none)."""
    before = by_alias(client, name, alias)
    client.set_registered_model_alias(name, alias, str(version))
    return str(before.version) if before is not None else None


def set_tags(client, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value)[:5000])


def download(client, version, dest: Path) -> Path:
    """The version's files under ``dest``; returns its ``hf/`` folder (the one holding ``config.json``)."""
    from mlflow.artifacts import download_artifacts

    from tasks.registry.serving import hf_folder
    from tasks.runtime.tracking import tracking_uri

    uri = client.get_model_version_download_uri(version.name, version.version)
    dest.mkdir(parents=True, exist_ok=True)
    return hf_folder(Path(download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking_uri())))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
