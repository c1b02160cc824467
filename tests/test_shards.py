"""Optimizer state in pieces: what one layout of ranks writes, another reads back exactly, and a gap is refused."""

from __future__ import annotations

import pytest
import torch

from tasks.training.shards import SLOTS, CheckpointError, Piece, describe, make_index, read, shard_name, write

SHAPES = {"embed": (6, 4), "experts.gate_up": (4, 3, 2), "norm": (5,)}


def full_state() -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return {name: {slot: torch.randn(shape, generator=generator).flatten() for slot in SLOTS}
            for name, shape in SHAPES.items()}


def split(ranks: int) -> list[list[tuple[str, int, int]]]:
    """ZeRO-style: every parameter cut into ``ranks`` ranges, the last one shorter (or empty)."""
    layout = [[] for _ in range(ranks)]
    for name, shape in SHAPES.items():
        numel = torch.Size(shape).numel()
        size = -(-numel // ranks)
        for rank in range(ranks):
            start = rank * size
            if start < numel:
                layout[rank].append((name, start, min(size, numel - start)))
    return layout


def pieces(layout: list[tuple[str, int, int]], state: dict) -> list[Piece]:
    return [Piece(name, SHAPES[name], start, {slot: flat[start:start + numel] for slot, flat in state[name].items()})
            for name, start, numel in layout]


@pytest.mark.parametrize("written_by,read_by", [(3, 2), (1, 4), (4, 1)])
def test_pieces_written_by_some_ranks_are_read_back_exactly_by_others(tmp_path, written_by, read_by):
    saved = full_state()
    described = {}
    for rank, layout in enumerate(split(written_by)):
        mine = pieces(layout, saved)
        write(tmp_path / shard_name(rank), mine)
        described[shard_name(rank)] = describe(mine)
    index = make_index(described)

    opened = []
    restored = {name: {slot: torch.zeros_like(flat) for slot, flat in slots.items()} for name, slots in saved.items()}
    for layout in split(read_by):
        read(index, pieces(layout, restored), lambda file: opened.append(file) or tmp_path / file)
    for name, slots in saved.items():
        for slot, flat in slots.items():
            assert torch.equal(restored[name][slot], flat), (name, slot)
    assert set(opened) == set(described)


def test_an_index_with_a_missing_range_or_another_shape_is_refused(tmp_path):
    saved = full_state()
    layout = split(2)
    described = {shard_name(0): describe(pieces(layout[0], saved))}  # rank 1's file is missing
    with pytest.raises(CheckpointError, match="cover"):
        make_index(described)
    index = make_index({shard_name(r): describe(pieces(layout[r], saved)) for r in range(2)})
    wrong = [Piece("norm", (6,), 0, {"fp32": torch.zeros(6)})]
    with pytest.raises(CheckpointError, match="norm has shape"):
        read(index, wrong, lambda file: tmp_path / file)
