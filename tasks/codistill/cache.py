"""The teacher cache's writer: the teacher's top-k over the windows the students read, in the layout
:mod:`tasks.training.distill.teachers` describes and reads.

**Which windows.** ``build_cache`` covers exactly the windows a student run of ``steps``
steps at ``(batch_size, seed)`` reads (``codistill.cache_windows=run``), or every window
when ``steps`` is None (``all``) or the run reaches a full epoch. Each cached window costs
one teacher forward; the students of the pipeline share the ``pretrain`` section (seq_len,
batch size, steps, seed), so they read the same windows, and covering only those is the
cheaper choice below one epoch (nano: 160 of ~390 windows), at the price of a cache that
serves only runs that read no further. A student whose run reads a window the cache lacks
is refused before it trains (:meth:`~tasks.training.distill.teachers.TeacherCache.check`).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from herd.stages.codistill import CodistillConfig
from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4
from tasks.training.distill.teachers import CACHE_DIR, FORMAT, INDEX, KeyedWindows, teacher_log_probs

log = logging.getLogger(__name__)


def build_cache(teacher: Llama4, tokens_dir: Path, seq_len: int, top_k: int, out_dir: Path,
                steps: int | None = None, batch_size: int = 1, seed: int | tuple[int, ...] = 0,
                teacher_hash: str = "", forward_batch: int = 8, exclude_shards: tuple[int, ...] = ()) -> dict:
    """Write the teacher's top-k for the windows a student run reads (see the module docstring); the index.

    ``tokens_dir`` is the tokenizer output's ``tokens/`` folder; ``steps``, ``batch_size``,
    ``seed`` and ``exclude_shards`` are the students' (None steps: every window; several seeds:
    the windows any of their runs reads). ``teacher_hash`` is the teacher artifact's output
    hash, recorded so a reader can tell which teacher wrote the cache.
    """
    if top_k > teacher.config.vocab_size:
        raise ValueError(f"top_k {top_k} exceeds the teacher's vocabulary ({teacher.config.vocab_size})")
    seeds = (seed,) if isinstance(seed, int) else tuple(seed)
    runs = [KeyedWindows(tokens_dir, seq_len, batch_size, s, exclude_shards) for s in seeds]
    windows = runs[0]
    if windows.index["vocab_size"] != teacher.config.vocab_size:
        raise ValueError(f"the tokens' vocabulary ({windows.index['vocab_size']}) is not the teacher's "
                         f"({teacher.config.vocab_size}): a student and its teacher share one tokenizer")
    folder = out_dir / CACHE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).unlink(missing_ok=True)
    teacher.eval()
    shards, mass = [], []
    for shard, starts in _union(run.read_positions(steps) for run in runs).items():
        ids, logprobs = [], []
        for first in range(0, len(starts), forward_batch):
            chunk = starts[first : first + forward_batch]
            rows = np.stack([np.asarray(windows.tokens[shard][s : s + seq_len + 1], dtype=np.int64) for s in chunk])
            top_BSK = teacher_log_probs(teacher, torch.from_numpy(rows)).topk(top_k, dim=-1)
            ids.append(top_BSK.indices.to(torch.int32).cpu())
            logprobs.append(top_BSK.values.to(torch.float16).cpu())
            mass.append(top_BSK.values.exp().sum(-1).mean().item())
        name = f"shard-{shard:05d}.safetensors"
        save_file({"starts": torch.tensor(starts, dtype=torch.int64), "ids": torch.cat(ids),
                   "logprobs": torch.cat(logprobs)}, str(folder / name))
        shards.append({"shard": shard, "file": name, "windows": len(starts)})
        log.info("teacher cache: shard %d, %d windows", shard, len(starts))
    coverage = ("all" if steps is None or steps * batch_size >= len(windows.windows)
                else {"steps": steps, "batch_size": batch_size, **({"seed": seed} if isinstance(seed, int)
                                                                   else {"seeds": list(seeds)})})
    index = {
        "format": FORMAT,
        "teacher": teacher_hash,
        "seq_len": seq_len,
        "top_k": top_k,
        "vocab_size": teacher.config.vocab_size,
        "logprobs": "log-softmax at T=1 over the vocabulary, top-k ids best first",
        "coverage": coverage,
        "windows": sum(s["windows"] for s in shards),
        "windows_in_tokens": len(windows.windows),
        "top_k_mass_mean": round(float(np.mean(mass)), 6) if mass else None,
        "shards": shards,
    }
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def _union(runs) -> dict[int, list[int]]:
    """Window starts per shard that any of the runs reads, sorted."""
    by_shard: dict[int, set[int]] = defaultdict(set)
    for positions in runs:
        for shard, starts in positions.items():
            by_shard[shard].update(starts)
    return {shard: sorted(starts) for shard, starts in sorted(by_shard.items())}


def build_student_cache(teacher: Llama4, tokens_dir: Path, out_dir: Path, codistill: CodistillConfig,
                        students: TrainingConfig, teacher_hash: str = "") -> dict:
    """The cache the students trained with ``students`` (the ``pretrain`` section) read, as ``codistill`` says."""
    steps = students.steps if codistill.cache_windows == "run" else None
    return build_cache(teacher, tokens_dir, students.seq_len, codistill.top_k, out_dir, steps, students.batch_size,
                       students.seed, teacher_hash, codistill.cache_batch_size)
