"""Running one stage by the contract: resolve inputs, derive the output, skip or compute, marker last.

A stage's output folder is complete only when its ``_SUCCESS`` marker exists; the marker is
written after the outputs and ``step.json``. A downstream stage refuses an input without
one, so a stage killed part-way leaves nothing another stage would read.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import herd
from herd.config import StageConfig
from herd.pipeline import STAGES, PipelineConfig, stage
from herd.stage import StageSpec
from herd.versioning import describe_changes, output_hash, output_uri, stage_record
from tasks.runtime import storage
from tasks.runtime.context import StageContext
from tasks.runtime.home import default_corpus, default_cyberseceval
from tasks.runtime.tracking import OUTPUT_CONTEXT, NullRun, StageRun, dataset_input

log = logging.getLogger("herd")

STEP_FILE = "step.json"
SUCCESS = "_SUCCESS"


# User-data inputs that default to the UDHR seed corpus when none is given.
SEED_CORPUS_INPUTS = {"corpus", "udhr"}
# Optional user-data inputs with a default location, used when none is given and it exists.
DEFAULT_INPUTS = {"cyberseceval": default_cyberseceval}


def default_input(key: str) -> str:
    if key in SEED_CORPUS_INPUTS:
        return default_corpus()
    return DEFAULT_INPUTS[key]() if key in DEFAULT_INPUTS else ""


class InputError(RuntimeError):
    pass


class NotSelected(RuntimeError):
    """A stage asked only to reuse its output, and there is none."""


class NotNeeded(NotSelected):
    """As :class:`NotSelected`, for a stage that no selected stage needs: its task is skipped, not failed."""


@dataclass
class PlannedStage:
    spec: StageSpec
    uri: str
    digest: str
    record: dict[str, Any]
    complete: bool
    previous: dict[str, Any] | None  # the version record of the latest complete output, if any

    @property
    def changes(self) -> list[str]:
        return describe_changes(self.previous, self.record) if self.previous else []


def input_hash(spec: StageSpec, key: str, uri: str) -> str:
    """An upstream stage's output hash (only from a complete output), or a fingerprint of user data."""
    slot = spec.inputs[key]
    if slot.from_stage:
        if not storage.exists(storage.join(uri, SUCCESS)):
            raise InputError(
                f"input {key}={uri} is incomplete (no {SUCCESS} marker): "
                f"stage {slot.from_stage!r} has not finished there"
            )
        return json.loads(storage.read_text(storage.join(uri, STEP_FILE)))["output_hash"]
    try:
        return f"data:{storage.fingerprint(uri)}"
    except storage.StorageError as err:
        raise InputError(f"input {key}={uri}: {err}") from None


def resolve_inputs(spec: StageSpec, given: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(given) - set(spec.inputs))
    if unknown:
        raise InputError(f"stage {spec.name} has no input {unknown[0]!r}; inputs: {', '.join(spec.inputs)}")
    resolved = {}
    for key, slot in spec.inputs.items():
        uri = given.get(key) or ""
        if not uri and slot.from_stage is None:
            uri = default_input(key)
        if not uri and slot.optional:
            continue
        if not uri:
            raise InputError(f"stage {spec.name} needs --in {key}=URI ({slot.description})")
        resolved[key] = uri
    return resolved


def latest_record(artifact_root: str, stage_name: str) -> dict[str, Any] | None:
    """The version record of the most recently finished complete output of a stage."""
    best: tuple[str, dict[str, Any]] | None = None
    for folder in storage.list_dirs(storage.join(artifact_root, stage_name)):
        if not storage.exists(storage.join(folder, SUCCESS)):
            continue
        step = json.loads(storage.read_text(storage.join(folder, STEP_FILE)))
        if best is None or step["finished_at"] > best[0]:
            best = (step["finished_at"], step["version"])
    return best[1] if best else None


def plan(config: PipelineConfig, artifact_root: str, external: dict[str, str]) -> list[PlannedStage]:
    """Every stage's output location and state, without running anything."""
    planned: dict[str, PlannedStage] = {}
    for spec in STAGES:
        hashes = {}
        for key, slot in spec.inputs.items():
            if slot.from_stage:
                hashes[key] = planned[slot.from_stage].digest
            else:
                uri = external.get(key) or default_input(key)
                if not uri and slot.optional:
                    continue  # left out, as a run leaves it out
                try:
                    if not uri:
                        raise InputError(f"stage {spec.name} needs --in {key}=URI")
                    hashes[key] = input_hash(spec, key, uri)
                except InputError:  # a plan still shows the other stages; running this one will say why
                    hashes[key] = f"missing:{uri}"
        record = stage_record(spec, config, hashes)
        digest = output_hash(record)
        uri = output_uri(artifact_root, spec.artifact_path, digest)
        complete = storage.exists(storage.join(uri, SUCCESS))
        previous = None if complete else latest_record(artifact_root, spec.artifact_path)
        planned[spec.id] = PlannedStage(spec, uri, digest, record, complete, previous)
    return list(planned.values())


def rank() -> int:
    """This process's rank when torchrun (or a gang launcher) started several; 0 otherwise."""
    return int(os.environ.get("RANK", "0"))


def _git_commit() -> str:
    if os.environ.get("HERD_GIT_COMMIT"):
        return os.environ["HERD_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def execute(
    name: str,
    run_id: str,
    config: PipelineConfig,
    given_inputs: dict[str, str],
    artifact_root: str,
    force: bool = False,
    reuse_only: bool = False,
    variant: str | None = None,
    skip_if_missing: bool = False,
) -> str:
    """Run stage ``name`` (or find it done) and return its output URI.

    ``reuse_only``: the stage was left out of the run; a missing output raises
    :class:`NotSelected`, or :class:`NotNeeded` with ``skip_if_missing`` (no selected stage needs it).
    """
    spec = stage(name, variant)
    stage_config: StageConfig = config.section(spec)
    inputs = resolve_inputs(spec, given_inputs)
    hashes = {key: input_hash(spec, key, uri) for key, uri in inputs.items()}
    record = stage_record(spec, config, hashes)
    digest = output_hash(record)
    out = output_uri(artifact_root, spec.artifact_path, digest)
    marker = storage.join(out, SUCCESS)

    label = spec.id
    if storage.exists(marker) and not force:
        log.info("%s: complete output found at %s, skipping (use --force to recompute)", label, out)
        return out
    if reuse_only and skip_if_missing:
        raise NotNeeded(f"stage {label} is not selected, has no complete output at {out}, and no selected stage "
                        "needs it: skipped")
    if reuse_only:
        raise NotSelected(f"stage {label} is not selected and has no complete output at {out}, and a selected "
                          "stage needs it; select it or run it first")
    this_rank = rank()
    if this_rank > 0:
        return _execute_follower(spec, run_id, config, stage_config, inputs, out, this_rank)
    tags = {
        "herd.preset": config.preset,
        "herd.config_hash": digest,
        "herd.code_version": f"{herd.__version__}+{spec.name}.v{spec.version}",
        "herd.dag_run_id": run_id,
        **({"herd.variant": spec.variant, "herd.model": record["config"][f"models.{spec.variant}"]}
           if spec.variant else {}),
    }
    params = {**stage_config.model_dump(mode="json"), **{f"input.{k}": v for k, v in inputs.items()}, "output": out}
    # Tracking first: an unreachable MLflow fails the stage before anything is touched.
    # System metrics for the stages that hold GPUs: where host load decides what a stage costs.
    tracker = StageRun.start(run_id, label, tags, params, system_metrics=spec.resources.gpus > 0)
    tracker.log_datasets(input_datasets(spec, inputs, hashes))
    if storage.exists(marker):
        storage.delete(marker)  # --force: readers must not take a folder being rewritten as complete
    if force or not spec.resumable:
        storage.delete_tree(out)  # a resumable stage keeps its checkpoints for a retry, not for --force
    remote = storage.is_s3(out)
    workdir = Path(tempfile.mkdtemp(prefix=f"herd-{name}-")) if remote else storage.local_path(out)
    workdir.mkdir(parents=True, exist_ok=True)
    started, clock, cpu_clock = _now(), time.monotonic(), time.process_time()
    log.info("%s: computing into %s (MLflow run %s)", label, out, tracker.run_id)
    try:
        module = importlib.import_module(f"tasks.{name}.stage")
        context = StageContext(spec, run_id, config, stage_config, inputs, out, workdir, tracker)
        summary = module.run(context) or {}
        wall = round(time.monotonic() - clock, 3)
        # CPU time of the stage process (all its threads): on a shared machine the wall
        # time says how busy the machine was, this says what the stage costs.
        cpu_seconds = round(time.process_time() - cpu_clock, 3)
        gpu_hours = round(gpus_in_use() * wall / 3600, 6)
        step = {
            "stage": name,
            "stage_id": label,
            "variant": spec.variant,
            "run_id": run_id,
            "inputs": inputs,
            "input_hashes": hashes,
            "config": stage_config.model_dump(mode="json"),
            "version": record,
            "output_hash": digest,
            "output": out,
            "code_version": {"herd": herd.__version__, "stage": spec.version, "git": _git_commit()},
            "host": socket.gethostname(),
            "started_at": started,
            "finished_at": _now(),
            "wall_seconds": wall,
            "cpu_seconds": cpu_seconds,
            "gpu_hours": gpu_hours,
            "metrics": summary,
            "mlflow_run_id": tracker.run_id,
        }
        (workdir / STEP_FILE).write_text(json.dumps(step, indent=2, sort_keys=True) + "\n")
        if remote:
            storage.upload_tree(workdir, out)
        tracker.log_artifact(workdir / STEP_FILE)
        tracker.log_datasets([dataset_input(label, out, digest, OUTPUT_CONTEXT, {"made_by_run": tracker.run_id})])
        tracker.log_metrics({"wall_seconds": wall, "cpu_seconds": cpu_seconds, "gpu_hours": gpu_hours})
        storage.write_text(marker, json.dumps({"output_hash": digest, "finished_at": step["finished_at"]}) + "\n")
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        if remote:
            shutil.rmtree(workdir, ignore_errors=True)
    tracker.end("FINISHED")
    log.info("%s: done in %.1f s -> %s", label, step["wall_seconds"], out)
    return out


def input_datasets(spec: StageSpec, inputs: dict[str, str], hashes: dict[str, str]) -> list:
    """Each input as an MLflow dataset: a stage's output under that stage's id (the dataset its run logged as
    output, so the two runs share it), user data under its input name; the context says which input it fed."""
    datasets = []
    for key, uri in inputs.items():
        producer = spec.inputs[key].from_stage
        profile = {}
        if producer:
            made_by = json.loads(storage.read_text(storage.join(uri, STEP_FILE))).get("mlflow_run_id")
            profile = {"made_by_run": made_by} if made_by else {}
        datasets.append(dataset_input(producer or key, uri, hashes[key], key, profile))
    return datasets


def gpus_in_use() -> int:
    """GPUs this stage holds: pods x GPUs per pod, as the backend that started it says."""
    per_pod = int(os.environ.get("HERD_GPUS_PER_POD", "0") or 0)
    if not per_pod and os.environ.get("CUDA_VISIBLE_DEVICES"):
        per_pod = len([d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    return per_pod * int(os.environ.get("HERD_NNODES", "1") or 1)


def _execute_follower(spec: StageSpec, run_id: str, config: PipelineConfig, stage_config: StageConfig,
                      inputs: dict[str, str], out: str, this_rank: int) -> str:
    """A rank other than 0 computes its share but neither tracks nor writes the stage's outputs.

    It shares the output folder on one machine (its checkpoint shards go beside rank 0's);
    with an S3 output each rank works in its own scratch folder and uploads its shards.
    """
    remote = storage.is_s3(out)
    workdir = Path(tempfile.mkdtemp(prefix=f"herd-{spec.name}-rank{this_rank}-")) if remote else storage.local_path(out)
    workdir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"tasks.{spec.name}.stage")
    context = StageContext(spec, run_id, config, stage_config, inputs, out, workdir, NullRun(), rank=this_rank)
    try:
        module.run(context)
    finally:
        if remote:
            shutil.rmtree(workdir, ignore_errors=True)
    return out
