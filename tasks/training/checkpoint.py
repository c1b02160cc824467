"""Checkpoints that resume exactly: weights, optimizer, scheduler and RNG in safetensors, never pickle.

``checkpoints/step-NNNNNNNN/`` holds ``model.safetensors`` (our parameter names),
``optimizer.safetensors`` (each parameter's AdamW moments and step count, by parameter
name), ``state.json`` (the step, which is also the data position, the scheduler, the
optimizer's hyper-parameters) and, written last, ``_COMPLETE``. A checkpoint is written
into a temporary folder and renamed, so a kill leaves either a whole one or none; when
the stage writes to S3 each checkpoint is uploaded too, marker last, and a retry on
another machine starts from there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tasks.runtime import storage

COMPLETE = "_COMPLETE"


def _name(step: int) -> str:
    return f"step-{step:08d}"


def save(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler, remote: str | None = None, keep: int = 2) -> Path:
    root = folder / "checkpoints"
    final, partial = root / _name(step), root / f".{_name(step)}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(partial / "model.safetensors"))
    names = {id(p): n for n, p in model.named_parameters()}
    moments, hyper = {}, []
    for group in optimizer.param_groups:
        hyper.append({k: v for k, v in group.items() if k != "params"} | {"params": [names[id(p)] for p in group["params"]]})
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                moments[f"{names[id(param)]}::{key}"] = value.detach().reshape(-1).contiguous() if value.dim() == 0 else value.detach().contiguous()
    save_file(moments, str(partial / "optimizer.safetensors"))
    save_file({"cpu_rng": torch.get_rng_state()}, str(partial / "rng.safetensors"))
    state = {"step": step, "scheduler": scheduler.state_dict(), "param_groups": hyper}
    (partial / "state.json").write_text(json.dumps(state, indent=2, default=float))
    return publish(partial, final, step, remote, keep)


def publish(partial: Path, final: Path, step: int, remote: str | None, keep: int = 2) -> Path:
    """Marker, atomic rename, upload (marker last), and only the newest ``keep`` checkpoints kept."""
    (partial / COMPLETE).write_text(f"{step}\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    if remote:
        target = storage.join(remote, "checkpoints", final.name)
        storage.upload_tree(final, target, skip={COMPLETE})
        storage.write_text(storage.join(target, COMPLETE), f"{step}\n")
    for old in sorted(p for p in final.parent.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(folder: Path, remote: str | None = None) -> Path | None:
    """The newest complete checkpoint, fetched from ``remote`` when the local folder has none."""
    local = sorted(p for p in (folder / "checkpoints").glob("step-*") if (p / COMPLETE).exists())
    if local:
        return local[-1]
    if not remote:
        return None
    complete = [d for d in storage.list_dirs(storage.join(remote, "checkpoints"))
                if storage.exists(storage.join(d, COMPLETE))]
    if not complete:
        return None
    newest = sorted(complete)[-1]
    target = folder / "checkpoints" / newest.rsplit("/", 1)[-1]
    for entry in storage.list_files(newest):
        storage.download(entry.uri, target / entry.relative)
    return target


def restore(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> int:
    """Load everything saved by :func:`save`; returns the step to continue from."""
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=True)
    state = json.loads((checkpoint / "state.json").read_text())
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
    return int(state["step"])
