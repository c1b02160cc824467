"""Teacher targets for co-distillation in the training loop: the cache of the teacher's top-k that stage
``codistill`` writes (:mod:`tasks.codistill.cache`), read here, or the teacher run online.

Shape legend: W cached windows of a shard, B batch, S sequence (targets), K top-k, V vocabulary.

The cache is the amortisation of LLAMA4_SPEC §2.3: the teacher's forward pass over the
students' data runs once, and every student (Scout, Maverick, each seed) reads the result.
A batch is a pure function of the step (:mod:`tasks.training.data`), so the cache is keyed
by the window a row comes from, ``(shard, start)``, not by step: students with other batch
sizes or seeds read the same entries. Layout, under the cache artifact's folder::

    cache/shard-00000.safetensors   starts (W,) int64, ids (W, S, K) int32, logprobs (W, S, K) float16
    cache/index.json                written last: teacher, seq_len, top_k, coverage, one entry per shard

``logprobs`` are the teacher's log-softmax at T = 1 over the whole vocabulary, at its top-k
ids, best first. Storing T = 1 log-probs rather than logits keeps the normaliser (the mass
the k ids cover, and the teacher's exact top probability, which the dynamic weight uses),
and tempering them and renormalising over the k ids at use is exact at any temperature, so
one cache serves every ``codistill.temperature`` (:mod:`tasks.training.distill.losses`). float16 keeps
about three significant digits of a log-prob, far finer than the student ever matches.

A student whose run reads a window the cache lacks is refused before it trains
(:meth:`TeacherCache.check`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from herd.stages.codistill import CodistillConfig
from tasks.model.llama4 import Llama4
from tasks.training.batch import Batch, BatchSource
from tasks.training.data import TokenWindows

CACHE_DIR = "cache"
INDEX = "index.json"
FORMAT = 1


def needs_cache(config: CodistillConfig) -> bool:
    """Whether the students read the teacher's targets from the cache (else online, or no teacher at all)."""
    return config.scheme != "none" and config.teacher_source == "cache"


def cache_files(relative: str) -> bool:
    """What :func:`tasks.runtime.storage.localize` must fetch to read a cache artifact."""
    return relative.startswith(f"{CACHE_DIR}/")


class KeyedWindows(TokenWindows):
    """:class:`TokenWindows` that say which window each row of a step is, and can leave whole shards out.

    ``exclude_shards`` removes those shards' windows before the seeded permutation, so a
    held-out set is never trained on.
    """

    def __init__(self, tokens_dir: Path, seq_len: int, batch_size: int, seed: int,
                 exclude_shards: tuple[int, ...] = ()) -> None:
        super().__init__(tokens_dir, seq_len, batch_size, seed)
        if exclude_shards:
            self.windows = self.windows[~np.isin(self.windows[:, 0], list(exclude_shards))]
            if len(self.windows) == 0:
                raise ValueError(f"no window left in {tokens_dir} after leaving out shards {exclude_shards}")

    def positions(self, step: int) -> list[tuple[int, int]]:
        """``(shard, start)`` of each row of ``step``'s batch, in row order."""
        return [self._window(sample) for sample in range(step * self.batch_size, (step + 1) * self.batch_size)]

    def read_positions(self, steps: int | None) -> dict[int, list[int]]:
        """Window starts per shard that a run of ``steps`` steps reads (every window for None), sorted."""
        if steps is None or steps * self.batch_size >= len(self.windows):
            chosen = {(int(shard), int(start)) for shard, start in self.windows}
        else:
            chosen = {position for step in range(steps) for position in self.positions(step)}
        by_shard: dict[int, list[int]] = defaultdict(list)
        for shard, start in chosen:
            by_shard[shard].append(start)
        return {shard: sorted(starts) for shard, starts in sorted(by_shard.items())}


@torch.no_grad()
def teacher_log_probs(teacher: Llama4, tokens_BS1: torch.Tensor) -> torch.Tensor:
    """The teacher's next-token log-probabilities (B, S, V) for windows of S + 1 tokens, fp32."""
    device = next(teacher.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits_BSV = teacher(tokens_BS1[:, :-1].to(device)).logits
    return F.log_softmax(logits_BSV.float(), dim=-1)


class TeacherCache:
    """Reads a cache artifact written by :func:`build_cache`; ``folder`` is the artifact (holding ``cache/``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / CACHE_DIR
        index_path = self.folder / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} is missing: not a complete teacher cache")
        self.index = json.loads(index_path.read_text())
        self.seq_len: int = self.index["seq_len"]
        self.top_k: int = self.index["top_k"]
        self._files = {entry["shard"]: entry["file"] for entry in self.index["shards"]}
        self._open: dict[int, tuple[object, dict[int, int]]] = {}

    def _shard(self, shard: int):
        if shard not in self._open:
            if shard not in self._files:
                raise KeyError(f"the teacher cache in {self.folder} holds no window of token shard {shard}")
            handle = safe_open(str(self.folder / self._files[shard]), framework="pt")
            rows = {int(start): row for row, start in enumerate(handle.get_tensor("starts").tolist())}
            self._open[shard] = (handle, rows)
        return self._open[shard]

    def has(self, shard: int, start: int) -> bool:
        return shard in self._files and start in self._shard(shard)[1]

    def targets(self, shard: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's top-k ids (S, K) int32 and log-probs (S, K) float16 for the window at ``(shard, start)``."""
        handle, rows = self._shard(shard)
        if start not in rows:
            raise KeyError(f"the teacher cache in {self.folder} holds no window at ({shard}, {start}); "
                           "it was built for other steps, batch size or seed (see its index.json coverage)")
        row = rows[start]
        return handle.get_slice("ids")[row : row + 1][0], handle.get_slice("logprobs")[row : row + 1][0]

    def check(self, windows: KeyedWindows, steps: int) -> None:
        """Refuse, before any training, a run of ``steps`` steps that would read a window the cache lacks."""
        if windows.seq_len != self.seq_len:
            raise ValueError(f"the teacher cache was built at seq_len {self.seq_len}, the student trains at "
                             f"{windows.seq_len}")
        missing = [(shard, start) for shard, starts in windows.read_positions(steps).items()
                   for start in starts if not self.has(shard, start)]
        if missing:
            raise ValueError(f"the teacher cache lacks {len(missing)} of the windows this run reads (first: "
                             f"{missing[0]}); it covers {self.index['coverage']}")


class CachedTeacherWindows(KeyedWindows):
    """Token windows with the cached teacher top-k of every row: ``extra`` holds ``teacher_ids`` and
    ``teacher_logprobs``, (B, S, K).

    The tokens are exactly :class:`TokenWindows`' for the same arguments, so a student reads
    the same data with or without a teacher. Under data parallelism pass the rank and world
    size: each rank then reads only its rows' targets, and ``extra`` says so (``teacher_rows``).
    """

    def __init__(self, tokens_dir: Path, seq_len: int, batch_size: int, seed: int, cache: TeacherCache,
                 exclude_shards: tuple[int, ...] = (), rank: int = 0, world_size: int = 1) -> None:
        super().__init__(tokens_dir, seq_len, batch_size, seed, exclude_shards)
        if cache.seq_len != seq_len:
            raise ValueError(f"the teacher cache was built at seq_len {cache.seq_len}, not {seq_len}")
        self.cache = cache
        self.rows = slice(rank, None, world_size)

    def batch(self, step: int) -> Batch:
        base = super().batch(step)
        mine = self.positions(step)[self.rows]
        ids, logprobs = zip(*(self.cache.targets(shard, start) for shard, start in mine))
        return base._replace(extra={**(base.extra or {}), "teacher_ids": torch.stack(ids),
                                    "teacher_logprobs": torch.stack(logprobs), "teacher_rows": self.rows})


class OnlineTeacherWindows:
    """Any batch source, with the teacher's forward pass on each batch (no gradient).

    ``top_k`` None gives the full distribution, ``extra["teacher_logits"]`` (B, S, V: the
    log-softmax, which is the logits up to a per-position constant that no softmax sees); a
    number gives the same top-k form as the cache, in fp32. Under data parallelism pass the
    rank and world size: the teacher then runs on this rank's rows only, and ``extra``
    says so (``teacher_rows``), which the objective checks. The teacher runs where its
    parameters are (move it to the GPU first), in bf16 autocast on a GPU.
    """

    def __init__(self, source: BatchSource, teacher: Llama4, top_k: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        self.source, self.teacher, self.top_k = source, teacher.eval(), top_k
        self.rows = slice(rank, None, world_size)

    def batch(self, step: int) -> Batch:
        base = self.source.batch(step)
        log_probs_BSV = teacher_log_probs(self.teacher, base.tokens[self.rows])
        if self.top_k is None:
            extra = {"teacher_logits": log_probs_BSV}
        else:
            top = log_probs_BSV.topk(self.top_k, dim=-1)
            extra = {"teacher_ids": top.indices.to(torch.int32), "teacher_logprobs": top.values}
        return base._replace(extra={**(base.extra or {}), **extra, "teacher_rows": self.rows})
