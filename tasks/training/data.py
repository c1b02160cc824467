"""Training windows over the tokenizer's packed shards: deterministic, resumable by step, language-aware.

The shards are cut into non-overlapping windows of ``seq_len + 1`` tokens (input and
shifted target). Each epoch visits every window once in a seeded permutation, so the
batch of step ``n`` is a pure function of ``(seed, n)``: resuming at step ``n`` needs no
other saved state, and any rank can compute its share of any step.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tasks.training.batch import Batch


class TokenWindows:
    def __init__(self, tokens_dir: Path, seq_len: int, batch_size: int, seed: int) -> None:
        self.index = json.loads((tokens_dir / "index.json").read_text())
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.languages: list[str] = self.index["languages"]
        dtype = np.dtype(self.index["dtype"])
        self.tokens, self.spans, starts = [], [], []
        for number, shard in enumerate(self.index["shards"]):
            tokens = np.memmap(tokens_dir.parent / shard["tokens"], dtype=dtype, mode="r")
            spans = np.fromfile(tokens_dir.parent / shard["spans"], dtype="<i8").reshape(-1, 3)
            self.tokens.append(tokens)
            self.spans.append(spans)
            count = max(0, (len(tokens) - 1) // seq_len)
            starts.append(np.stack([np.full(count, number), np.arange(count) * seq_len], axis=1))
        self.windows = np.concatenate(starts) if starts else np.zeros((0, 2), dtype=np.int64)
        if len(self.windows) == 0:
            raise ValueError(f"the token shards in {tokens_dir} hold no window of {seq_len + 1} tokens")
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def tokens_per_epoch(self) -> int:
        return len(self.windows) * self.seq_len

    def _window(self, sample: int) -> tuple[int, int]:
        epoch, offset = divmod(sample, len(self.windows))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng((self.seed, epoch)).permutation(len(self.windows)))
        shard, start = self.windows[self._order[1][offset]]
        return int(shard), int(start)

    def batch(self, step: int) -> Batch:
        """``(batch, seq_len + 1)`` token ids for ``step``, and how many of them each language wrote."""
        rows, languages = [], Counter()
        for sample in range(step * self.batch_size, (step + 1) * self.batch_size):
            shard, start = self._window(sample)
            end = start + self.seq_len + 1
            rows.append(np.asarray(self.tokens[shard][start:end], dtype=np.int64))
            languages.update(self._languages(shard, start, end))
        return Batch(torch.from_numpy(np.stack(rows)), languages)

    def _languages(self, shard: int, start: int, end: int) -> Counter:
        spans = self.spans[shard]
        first = max(0, int(np.searchsorted(spans[:, 0], start, side="right")) - 1)
        last = int(np.searchsorted(spans[:, 0], end, side="left"))
        counts: Counter = Counter()
        for span_start, length, lang in spans[first:last]:
            overlap = min(end, span_start + length) - max(start, span_start)
            if overlap > 0:
                counts[self.languages[lang]] += int(overlap)
        return counts
