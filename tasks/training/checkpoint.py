"""Checkpoints that resume exactly: weights, optimizer, scheduler and RNG in safetensors, never pickle.

``checkpoints/step-NNNNNNNN/`` holds ``model.safetensors`` (our parameter names),
``optimizer.safetensors`` (each parameter's AdamW moments and step count, by parameter
name), ``state.json`` (the step, which is also the data position, the scheduler, the
optimizer's hyper-parameters), the JSON documents the loop saves with it (its history, so
that the reports of a resumed run cover every step) and, written last, ``_COMPLETE``. A
checkpoint is written into a temporary folder and renamed, so a kill leaves either a whole
one or none; when the stage writes to S3 each checkpoint is uploaded too, marker last, and a
retry on another machine starts from there. The DeepSpeed engine writes the same folder with
each rank's optimizer shard in place of ``optimizer.safetensors`` (:mod:`.shards`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tasks.runtime import storage

COMPLETE = "_COMPLETE"


@dataclass(frozen=True)
class Resumed:
    """Where a run continues: ``step`` steps done (0: a fresh start), and the JSON documents saved with them."""

    step: int = 0
    documents: dict[str, Any] = field(default_factory=dict)


def name(step: int) -> str:
    return f"step-{step:08d}"


def folders(folder: Path, step: int) -> tuple[Path, Path]:
    """(final, partial): where checkpoint ``step`` ends up, and where it is written first."""
    root = folder / "checkpoints"
    return root / name(step), root / f".{name(step)}.partial"


def remote_folder(remote: str, checkpoint: str) -> str:
    return storage.join(remote, "checkpoints", checkpoint)


def write_documents(partial: Path, documents: dict[str, Any]) -> list[str]:
    """Each document as ``<name>.json`` in the checkpoint; their names, for ``state.json``."""
    for key, document in documents.items():
        (partial / f"{key}.json").write_text(json.dumps(document))
    return sorted(documents)


def read_documents(state: dict, path_of: Callable[[str], Path]) -> dict[str, Any]:
    return {key: json.loads(path_of(f"{key}.json").read_text()) for key in state.get("documents", [])}


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's own values, contiguous: under FP8 training the routed experts' weights (and AdamW moments
    shaped after them) are torchao wrapper subclasses, whose ``_data`` holds the values safetensors can write."""
    tensor = tensor.detach()
    return getattr(tensor, "_data", tensor).contiguous()


def save(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler, remote: str | None = None, keep: int = 2, documents: dict[str, Any] | None = None) -> Path:
    final, partial = folders(folder, step)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: _plain(v) for k, v in model.state_dict().items()}, str(partial / "model.safetensors"))
    names = {id(p): n for n, p in model.named_parameters()}
    moments, hyper = {}, []
    for group in optimizer.param_groups:
        hyper.append({k: v for k, v in group.items() if k != "params"} | {"params": [names[id(p)] for p in group["params"]]})
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                moments[f"{names[id(param)]}::{key}"] = _plain(value.reshape(-1) if value.dim() == 0 else value)
    save_file(moments, str(partial / "optimizer.safetensors"))
    save_file({"cpu_rng": torch.get_rng_state()}, str(partial / "rng.safetensors"))
    state = {"engine": "plain", "step": step, "scheduler": scheduler.state_dict(), "param_groups": hyper,
             "documents": write_documents(partial, documents or {})}
    (partial / "state.json").write_text(json.dumps(state, indent=2, default=float))
    return publish(partial, final, step, remote, keep)


def publish(partial: Path, final: Path, step: int, remote: str | None, keep: int = 2, uploaded: bool = False) -> Path:
    """Marker, atomic rename, upload (unless each file is there already), the remote marker last, and only the
    newest ``keep`` local checkpoints kept."""
    (partial / COMPLETE).write_text(f"{step}\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    if remote:
        target = remote_folder(remote, final.name)
        if not uploaded:  # over any earlier attempt at this step, which is not complete until this one is
            storage.delete(storage.join(target, COMPLETE))
            storage.upload_tree(final, target, skip={COMPLETE})
        storage.write_text(storage.join(target, COMPLETE), f"{step}\n")
    for old in sorted(p for p in final.parent.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def newest(folder: Path, remote: str | None = None) -> str | None:
    """The name of the newest complete checkpoint: under ``folder`` if there is one, else on ``remote``."""
    local = sorted(p.name for p in (folder / "checkpoints").glob("step-*") if (p / COMPLETE).exists())
    if local:
        return local[-1]
    if not remote:
        return None
    complete = [d.rsplit("/", 1)[-1] for d in storage.list_dirs(storage.join(remote, "checkpoints"))
                if storage.exists(storage.join(d, COMPLETE))]
    return sorted(complete)[-1] if complete else None


@contextmanager
def files_of(folder: Path, checkpoint: str, remote: str | None, rank: int = 0) -> Iterator[Callable[[str], Path]]:
    """A local path for each file of ``checkpoint``: the complete local copy, else one fetched from ``remote`` when
    first asked for, into a scratch folder of this rank's (never taken for a checkpoint, not fetched over by ranks
    sharing ``folder``, removed after)."""
    local = folder / "checkpoints" / checkpoint
    if (local / COMPLETE).exists() or not remote:
        yield lambda file: local / file
        return
    fetched = folder / "checkpoints" / f".{checkpoint}.fetched-rank{rank}"
    shutil.rmtree(fetched, ignore_errors=True)

    def fetch(file: str) -> Path:
        path = fetched / file
        if not path.exists():
            storage.download(storage.join(remote_folder(remote, checkpoint), file), path)
        return path

    try:
        yield fetch
    finally:
        shutil.rmtree(fetched, ignore_errors=True)


def latest(folder: Path, remote: str | None = None) -> Path | None:
    """The newest complete checkpoint, fetched whole from ``remote`` when the local folder has none."""
    found = newest(folder, remote)
    if found is None:
        return None
    target = folder / "checkpoints" / found
    if not (target / COMPLETE).exists():
        for entry in storage.list_files(remote_folder(remote, found)):
            storage.download(entry.uri, target / entry.relative)
    return target


def restore(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> Resumed:
    """Load everything saved by :func:`save`: the step to continue from and the documents saved with it."""
    state = json.loads((checkpoint / "state.json").read_text())
    if "scheduler" not in state:
        raise ValueError(f"checkpoint {checkpoint} was written by the {state.get('engine', 'deepspeed')} engine; "
                         "this run uses the plain one: resume it with the engine that wrote it")
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=True)
    moments = load_file(str(checkpoint / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        group.update({k: v for k, v in saved.items() if k != "params"})
    for key, value in moments.items():
        name, slot = key.split("::")
        if slot == "step":
            value = value.reshape(())
        optimizer.state[params[name]][slot] = value
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(str(checkpoint / "rng.safetensors"))["cpu_rng"])
    return Resumed(int(state["step"]), read_documents(state, lambda file: checkpoint / file))
