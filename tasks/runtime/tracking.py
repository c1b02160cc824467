"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

``MLFLOW_TRACKING_URI`` is honoured; without it the embedded store is a sqlite file and
an artifact folder under ``HERD_HOME``. A tracking server that does not answer fails the
stage within seconds with a message that says so, instead of minutes of retries.

The experiment declares itself a model-training experiment, so MLflow's UI opens on its
runs. A stage's run is named by its id (``scout.sft``), logs what it read and wrote as
MLflow datasets (name, content hash, URI), and, when it holds GPUs, MLflow's system
metrics (``HERD_SYSTEM_METRICS=0`` turns them off). A stage run by hand opens the parent
run itself and closes it when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable
from urllib.error import URLError
from urllib.request import urlopen

from tasks.runtime.home import mlflow_dir

log = logging.getLogger(__name__)

EXPERIMENT = os.environ.get("HERD_MLFLOW_EXPERIMENT", "herd")
RUN_TAG = "herd.run_id"
KIND_TAG = "herd.kind"
# MLflow 3's UI reads this experiment tag: "custom_model_development" opens on runs and the
# model registry, "genai_development" on traces and sessions.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# Where a dataset appears beside a run: the input it was read as, or the stage's output.
DATASET_CONTEXT_TAG = "mlflow.data.context"
OUTPUT_CONTEXT = "output"


class TrackingUnavailable(RuntimeError):
    pass


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = mlflow_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _check_reachable(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:  # noqa: S310 - user-configured URI
            response.read()
    except (URLError, OSError) as err:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); "
            "start it or point MLFLOW_TRACKING_URI at a running one"
        ) from None


def client():
    """An MlflowClient for the configured store, failing fast if a server is down."""
    # Fail in seconds, not after minutes of exponential back-off, when a server goes away mid-run.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    uri = tracking_uri()
    _check_reachable(uri)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(mlflow_client) -> str:
    found = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # a store made before herd declared the kind
            mlflow_client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        return found.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (mlflow_dir() / "artifacts").as_uri()
    try:
        return mlflow_client.create_experiment(EXPERIMENT, artifact_location=location,
                                               tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except Exception:  # another stage created it at the same moment
        found = mlflow_client.get_experiment_by_name(EXPERIMENT)
        if found is None:
            raise
        return found.experiment_id


def find_parent(mlflow_client, run_id: str):
    runs = mlflow_client.search_runs(
        [experiment_id(mlflow_client)],
        filter_string=f"tags.`{RUN_TAG}` = '{run_id}' and tags.`{KIND_TAG}` = 'pipeline'",
        max_results=1,
    )
    return runs[0] if runs else None


def open_parent(mlflow_client, run_id: str, tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """The pipeline run's parent MLflow run, and whether this call created it."""
    parent = find_parent(mlflow_client, run_id)
    if parent is not None:
        return parent.info.run_id, False
    created = mlflow_client.create_run(
        experiment_id(mlflow_client),
        run_name=f"pipeline {run_id}",
        tags={RUN_TAG: run_id, KIND_TAG: "pipeline", **(tags or {})},
    )
    return created.info.run_id, True


def ensure_parent(mlflow_client, run_id: str, tags: dict[str, str] | None = None) -> str:
    return open_parent(mlflow_client, run_id, tags)[0]


def system_metrics_wanted() -> bool:
    """MLflow's system metrics (CPU, memory, disk, network, GPU): on unless ``HERD_SYSTEM_METRICS`` is 0/false/off."""
    return os.environ.get("HERD_SYSTEM_METRICS", "1").strip().lower() not in {"0", "false", "no", "off"}


def dataset_input(name: str, uri: str, digest: str, context: str, profile: dict[str, Any] | None = None):
    """An MLflow dataset that is a pointer, not a copy: its name, content hash and URI, and how a run used it."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset, DatasetInput, InputTag

    with warnings.catch_warnings():  # a local path matches MLflow's local source twice over: the same class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(uri)
    dataset = Dataset(name, digest, source._get_source_type(), source.to_json(),
                      profile=json.dumps(profile, sort_keys=True) if profile else None)
    return DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, context)])


def metric_name(name: str) -> str:
    """MLflow allows only ``[\\w\\-. :/]`` in a metric name: ``pass@1`` becomes ``pass_at_1``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


class StageRun:
    """A nested MLflow run for one stage attempt; the only way stage code talks to MLflow."""

    def __init__(self, mlflow_client, mlflow_run_id: str, opened_parent: str | None = None) -> None:
        self.client = mlflow_client
        self.run_id = mlflow_run_id
        self.opened_parent = opened_parent  # the parent run this stage opened (run by hand): it closes it too
        self._monitor = None

    @classmethod
    def start(cls, run_id: str, stage: str, tags: dict[str, str], params: dict[str, Any],
              system_metrics: bool = False) -> "StageRun":
        """A nested run named ``stage`` (``scout.sft``) under the pipeline run's parent, opening that if none is."""
        mlflow_client = client()
        parent, opened = open_parent(mlflow_client, run_id, {"herd.preset": tags.get("herd.preset", "")})
        created = mlflow_client.create_run(
            experiment_id(mlflow_client),
            run_name=stage,
            tags={"mlflow.parentRunId": parent, RUN_TAG: run_id, KIND_TAG: "stage", "herd.stage": stage, **tags},
        )
        run = cls(mlflow_client, created.info.run_id, parent if opened else None)
        run.log_params(params)
        if system_metrics and system_metrics_wanted():
            run._start_system_metrics()
        return run

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, tracking_uri=tracking_uri())
        self._monitor.start()

    def log_datasets(self, datasets: list) -> None:
        """Datasets made with :func:`dataset_input`, shown in the run's Dataset column and on its page."""
        if datasets:
            self.client.log_inputs(self.run_id, datasets=datasets)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step or 0) for k, v in sorted(metrics.items())
                 if v is not None]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_plot(self, name: str, draw: Callable[[Any], None], folder: str = "plots") -> None:
        """Draw with matplotlib and log a PNG; a plot that fails is a warning, never a failed stage."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            figure = plt.figure(figsize=(10, 5))
            try:
                draw(figure)
                self.client.log_figure(self.run_id, figure, f"{folder}/{name}")
            finally:
                plt.close(figure)
        except Exception as err:  # noqa: BLE001 - a missing plot must not cost a training run
            log.warning("plot %s not drawn: %s", name, err)

    def end(self, status: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.client.set_terminated(self.run_id, status=status)
        if self.opened_parent:
            self.client.set_terminated(self.opened_parent, status=status)


class NullRun:
    """What ranks other than 0 log to: nothing (rank 0 logs for the stage)."""

    run_id = ""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass

    def log_plot(self, name: str, draw: Callable[[Any], None], folder: str = "plots") -> None:
        pass

    def log_datasets(self, datasets: list) -> None:
        pass

    def end(self, status: str) -> None:
        pass


def end_parent(run_id: str, status: str, summary: dict[str, float]) -> str | None:
    mlflow_client = client()
    parent = find_parent(mlflow_client, run_id)
    if parent is None:
        return None
    run = StageRun(mlflow_client, parent.info.run_id)
    run.log_metrics(summary)
    run.end(status)
    return parent.info.run_id
