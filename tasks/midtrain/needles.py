"""Needle-in-a-haystack sequences: a pass key hidden in long text, asked for at the end.

A haystack is a window of the tokenizer's shards (documents of the mix, packed), the
needle a sentence carrying a random five-digit key, inserted at a chosen depth; the
sequence ends with the question and the key. The model recalls the needle when its top-1
prediction is right on every key token (teacher-forced), which is what the grid measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.training.batch import Batch
from tasks.training.data import TokenWindows

NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass(frozen=True)
class Needle:
    tokens: list[int]  # the whole sequence, seq_len + 1 ids
    answer: slice  # positions of the key's tokens in ``tokens``


class NeedleMaker:
    def __init__(self, tokenizer_file: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def make(self, haystack: np.ndarray, length: int, depth: float, key: int) -> Needle:
        """A sequence of ``length`` ids: haystack with the needle at ``depth`` (0 first, 1 last), question, key."""
        needle = self.encode(" " + NEEDLE.format(key=key) + " ")
        question, answer = self.encode(QUESTION), self.encode(f" {key}")
        room = length - len(needle) - len(question) - len(answer)
        if room < 0:
            raise ValueError(f"a sequence of {length} tokens cannot hold the needle and the question")
        at = int(round(depth * room))
        tokens = [*haystack[:at].tolist(), *needle, *haystack[at:room].tolist(), *question, *answer]
        return Needle(tokens, slice(length - len(answer), length))


class NeedleWindows:
    """Training batches: shard windows, a share of them carrying a needle whose key tokens weigh more."""

    def __init__(self, tokens_dir: Path, maker: NeedleMaker, seq_len: int, batch_size: int, seed: int,
                 needle_fraction: float, answer_weight: float) -> None:
        self.windows = TokenWindows(tokens_dir, seq_len, batch_size, seed)
        self.maker, self.seed = maker, seed
        self.seq_len, self.needle_fraction, self.answer_weight = seq_len, needle_fraction, answer_weight

    def batch(self, step: int) -> Batch:
        plain = self.windows.batch(step)
        rng = np.random.default_rng((self.seed, step, 1))  # a pure function of the step, like the windows
        rows, weights = [], torch.ones(plain.tokens.shape[0], self.seq_len)
        for row, haystack in enumerate(plain.tokens.numpy()):
            if rng.random() >= self.needle_fraction:
                rows.append(haystack)
                continue
            key = int(rng.integers(10_000, 100_000))
            needle = self.maker.make(haystack, self.seq_len + 1, float(rng.random()), key)
            rows.append(np.asarray(needle.tokens))
            # Target t predicts token t + 1: the key's targets sit one position earlier.
            weights[row, needle.answer.start - 1 : needle.answer.stop - 1] = self.answer_weight
        return Batch(torch.from_numpy(np.stack(rows).astype(np.int64)), plain.languages, weights)


@dataclass(frozen=True)
class NeedleTrials:
    needles: list[Needle]
    batch: torch.Tensor  # (trials, length + 1) the needles' sequences
    width: int  # the longest key's tokens: every key ends its sequence, so the last ``width`` logits are all it takes


def needle_trials(maker: NeedleMaker, tokens_dir: Path, length: int, depth: float, trials: int,
                  seed: int) -> NeedleTrials:
    """``trials`` needles at ``depth`` in ``length``-token contexts, the same for a given seed."""
    haystacks = TokenWindows(tokens_dir, length, trials, seed).batch(0).tokens.numpy()
    rng = np.random.default_rng((seed, length, int(depth * 1000)))
    needles = [maker.make(h, length, depth, int(rng.integers(10_000, 100_000))) for h in haystacks]
    return NeedleTrials(needles, torch.tensor([n.tokens for n in needles]),
                        max(len(n.tokens) - n.answer.start for n in needles))


@torch.no_grad()
def recall(model, maker: NeedleMaker, tokens_dir: Path, length: int, depth: float, trials: int, seed: int) -> float:
    """Share of ``trials`` needles at ``depth`` in ``length``-token contexts whose key the model predicts exactly."""
    found = needle_trials(maker, tokens_dir, length, depth, trials, seed)
    return recalled(found, model(found.batch[:, :-1], last=found.width).logits)


def recalled(found: NeedleTrials, logits_BWV: torch.Tensor) -> float:
    """Share of the needles whose every key token is the top-1 of the last ``found.width`` positions' logits."""
    needles, batch, width = found.needles, found.batch, found.width
    predicted = logits_BWV.argmax(-1)  # predicted[:, j] guesses batch[:, length - width + j]
    hits = 0
    for row, needle in enumerate(needles):
        targets = batch[row, needle.answer]
        guesses = predicted[row, width - len(targets) :]
        hits += bool(torch.equal(targets, guesses))
    return hits / len(needles)
