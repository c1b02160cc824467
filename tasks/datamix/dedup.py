"""Exact and MinHash near-duplicate detection in bounded memory.

The MinHash permutations and the LSH band/row split come from ``datasketch`` (its
``MinHash`` and ``_optimal_param``); shingles are hashed with numpy instead of one Python
call per shingle. Seen keys live in a sorted ``uint64`` array, 8 bytes per key (one key per
LSH band), instead of a Python set of ~60 bytes per key: a 1M-document corpus costs ~100 MB.

A document is a near-duplicate when one of its band keys was produced by an earlier
document, which keeps the first document of each group in input order.
"""

from __future__ import annotations

import hashlib

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)
_POWER_BASE = np.uint64(1_000_003)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    def __init__(self, num_perm: int, threshold: float, shingle_chars: int, seed: int = 1) -> None:
        self.shingle = shingle_chars
        a, b = MinHash(num_perm=num_perm, seed=seed).permutations
        self.a, self.b = a.astype(np.uint64), b.astype(np.uint64)
        self.bands, self.rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        self.powers = _POWER_BASE ** np.arange(shingle_chars - 1, -1, -1, dtype=np.uint64)
        self.band_salt = _mix64(np.arange(1, self.bands + 1, dtype=np.uint64))

    def band_keys(self, text: str) -> np.ndarray:
        """One uint64 per LSH band for the character shingles of ``text`` (case and spacing folded)."""
        folded = " ".join(text.lower().split())
        points = np.frombuffer(folded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(points) < self.shingle:
            points = np.pad(points, (0, self.shingle - len(points)))
        windows = np.lib.stride_tricks.sliding_window_view(points, self.shingle)
        shingles = np.unique(_mix64(windows @ self.powers) & _MAX_HASH)
        with np.errstate(over="ignore"):
            permuted = ((shingles[:, None] * self.a[None, :] + self.b[None, :]) % _MERSENNE) & _MAX_HASH
        signature = permuted.min(axis=0)[: self.bands * self.rows].reshape(self.bands, self.rows)
        keys = self.band_salt.copy()
        for row in range(self.rows):
            keys = _mix64(keys ^ signature[:, row])
        return keys


def exact_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class SeenKeys:
    """A growing set of uint64 keys in bounded memory: sorted arrays merged like a log-structured tree.

    Levels roughly double in size, so adding N keys costs O(N log N) and a lookup is one
    binary search per level.
    """

    def __init__(self) -> None:
        self.levels: list[np.ndarray] = []

    def _contains(self, flat: np.ndarray) -> np.ndarray:
        found = np.zeros(len(flat), dtype=bool)
        for level in self.levels:
            positions = np.searchsorted(level, flat).clip(max=len(level) - 1)
            found |= level[positions] == flat
        return found

    def _add(self, flat: np.ndarray) -> None:
        merged = flat
        while self.levels and len(self.levels[-1]) <= len(merged):
            merged = np.concatenate([self.levels.pop(), merged])
        # numpy's stable sort of integers is a radix sort: linear, which keeps merges cheap.
        merged = np.sort(merged, kind="stable")
        keep = np.ones(len(merged), dtype=bool)
        keep[1:] = merged[1:] != merged[:-1]
        self.levels.append(merged[keep])

    def check_and_add(self, keys_per_doc: np.ndarray) -> np.ndarray:
        """``keys_per_doc`` is (docs, k). Returns, per doc, whether any key was seen earlier (earlier batches or docs)."""
        docs, width = keys_per_doc.shape
        if docs == 0:
            return np.zeros(0, dtype=bool)
        flat = keys_per_doc.ravel()
        owner = np.repeat(np.arange(docs), width)
        order = np.argsort(flat, kind="stable")
        sorted_keys, sorted_owner = flat[order], owner[order]
        # Equal keys sit together in owner order, so a key equal to its predecessor from
        # another document marks a later document that repeats an earlier one.
        repeat = np.zeros(len(flat), dtype=bool)
        repeat[1:] = (sorted_keys[1:] == sorted_keys[:-1]) & (sorted_owner[1:] != sorted_owner[:-1])
        within_batch = np.zeros(docs, dtype=bool)
        np.logical_or.at(within_batch, sorted_owner, repeat)
        earlier = self._contains(flat).reshape(docs, width).any(axis=1)
        self._add(flat)
        return within_batch | earlier

    @property
    def nbytes(self) -> int:
        return sum(level.nbytes for level in self.levels)
