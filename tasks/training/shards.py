"""Optimizer state in pieces: each rank writes the ranges it holds, any other layout reads the ranges it needs.

A piece is a contiguous range ``[start, start + numel)`` of one parameter's flattened full
tensor (every expert of a MoE layer, however a run splits them) in each slot: ``fp32`` (the
master weight) and AdamW's ``exp_avg`` and ``exp_avg_sq``. Rank r writes its pieces to
``optimizer-rank{r}.safetensors``, one 1-D tensor per parameter and slot named
``{parameter}::{slot}``, and ``index.json`` says which file holds which range of which
parameter. A run on another number of ranks, ZeRO stage or expert split reads, for every
range it holds now, the overlapping parts of whichever files hold them: resharding is
reading. Only safetensors and JSON: nothing is unpickled.

    write(folder / shard_name(rank), my_pieces)                     # every rank
    index = make_index({shard_name(r): describe(pieces_of_r), ...}) # rank 0 writes it as index.json
    read(index, my_pieces, path_of)                                 # on resume, in any layout
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SLOTS = ("fp32", "exp_avg", "exp_avg_sq")


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class Piece:
    name: str  # the parameter, as the unsplit model names it
    shape: tuple[int, ...]  # the full parameter's shape: every expert
    start: int  # offset of this range in the flattened full parameter
    slots: dict[str, torch.Tensor]  # slot -> 1-D view of the range, all of one length

    @property
    def numel(self) -> int:
        return next(iter(self.slots.values())).numel()


def shard_name(rank: int) -> str:
    return f"optimizer-rank{rank}.safetensors"


def describe(pieces: list[Piece]) -> list[dict]:
    """What the index needs to know of a file's pieces."""
    return [{"name": piece.name, "shape": list(piece.shape), "start": piece.start, "numel": piece.numel}
            for piece in pieces]


def write(path: Path, pieces: list[Piece]) -> None:
    """Save ``pieces`` to one safetensors file (copies: the views share their flat buffers)."""
    save_file({f"{piece.name}::{slot}": view.detach().to("cpu", copy=True)
               for piece in pieces for slot, view in piece.slots.items()}, str(path))


def make_index(entries_by_file: dict[str, list[dict]]) -> dict:
    """``index.json``: every parameter's shape and the files holding its ranges, checked to cover it once."""
    params: dict[str, dict] = {}
    for file, entries in entries_by_file.items():
        for entry in entries:
            param = params.setdefault(entry["name"], {"shape": entry["shape"], "pieces": []})
            if param["shape"] != entry["shape"]:
                raise CheckpointError(f"{entry['name']}: {file} holds shape {entry['shape']}, another file "
                                      f"{param['shape']}")
            param["pieces"].append({"file": file, "start": entry["start"], "numel": entry["numel"]})
    for name, param in params.items():
        param["pieces"].sort(key=lambda part: part["start"])
        end = 0
        for part in param["pieces"]:
            if part["start"] != end:
                raise CheckpointError(f"{name}: the ranks' pieces leave a gap or overlap at element {end}")
            end += part["numel"]
        if end != math.prod(param["shape"]):
            raise CheckpointError(f"{name}: the ranks' pieces cover {end} of {math.prod(param['shape'])} elements")
    return {"slots": list(SLOTS), "params": params}


def read(index: dict, pieces: list[Piece], path_of: Callable[[str], Path]) -> None:
    """Fill every piece's views from the saved ranges overlapping it; ``path_of(file)`` gives a local copy.

    Only the files holding a range some piece needs are opened, and only those ranges read.
    """
    params = index["params"]
    with ExitStack() as stack:
        opened = {}
        for piece in pieces:
            saved = params.get(piece.name)
            if saved is None:
                raise CheckpointError(f"the checkpoint has no optimizer state for parameter {piece.name}")
            if tuple(saved["shape"]) != piece.shape:
                raise CheckpointError(f"parameter {piece.name} has shape {list(piece.shape)}; the checkpoint's has "
                                      f"{saved['shape']}")
            low, high = piece.start, piece.start + piece.numel
            for part in saved["pieces"]:
                first, last = max(low, part["start"]), min(high, part["start"] + part["numel"])
                if first >= last:
                    continue
                if part["file"] not in opened:
                    opened[part["file"]] = stack.enter_context(safe_open(str(path_of(part["file"])), "pt"))
                source = opened[part["file"]]
                for slot, view in piece.slots.items():
                    saved_range = source.get_slice(f"{piece.name}::{slot}")[first - part["start"]:last - part["start"]]
                    view[first - low:last - low].copy_(saved_range)
