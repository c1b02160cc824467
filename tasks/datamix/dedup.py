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

_POWER_BASE = np.uint64(1_000_003)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads polynomial hashes over all 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """Character-shingle MinHash signatures folded into one key per LSH band."""

    def __init__(self, num_perm: int, threshold: float, shingle_chars: int, seed: int = 1) -> None:
        self.shingle = shingle_chars
        a, b = MinHash(num_perm=num_perm, seed=seed).permutations
        # Multiply-shift hashing (a odd, arithmetic mod 2**64, keep the top 32 bits) instead of
        # datasketch's mod-Mersenne permutation: the same family of random hashes, without a
        # modulo on every (shingle, permutation) pair.
        self.a = a.astype(np.uint64) | np.uint64(1)
        self.b = b.astype(np.uint64)
        self.bands, self.rows = _optimal_param(threshold, num_perm, 0.5, 0.5)
        self.powers = [_POWER_BASE ** np.uint64(shingle_chars - 1 - i) for i in range(shingle_chars)]
        rng = np.random.default_rng(seed)
        self.row_weights = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self.band_salt = _mix64(np.arange(1, self.bands + 1, dtype=np.uint64))

    def band_keys(self, text: str) -> np.ndarray:
        """One uint64 per LSH band for the character shingles of ``text`` (case and spacing folded)."""
        folded = " ".join(text.lower().split())
        points = np.frombuffer(folded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(points) < self.shingle:
            points = np.pad(points, (0, self.shingle - len(points)))
        count = len(points) - self.shingle + 1
        with np.errstate(over="ignore"):
            rolled = points[:count] * self.powers[0]
            for offset in range(1, self.shingle):
                rolled += points[offset : offset + count] * self.powers[offset]
            shingles = _mix64(rolled)
            signature = ((shingles[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)).min(axis=0)
            bands = signature[: self.bands * self.rows].reshape(self.bands, self.rows)
            return _mix64((bands * self.row_weights[None, :]).sum(axis=1) ^ self.band_salt)


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
