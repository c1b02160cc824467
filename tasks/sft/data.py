"""SFT examples as token ids with the assistant mask, packed into fixed-length rows.

    examples, too_long = render_examples(tokenizer, problems, seed, max_tokens=seq_len + 1)
    rows = PackedRows(examples, seq_len, batch_size, seed, pad_id(tokenizer))
    rows.batch(step)   # Batch(tokens (B, S+1), Counter(), weights (B, S))

A row holds whole examples one after another (each starts with ``<|begin_of_text|>``) and
is padded on the right with ``<|finetune_right_pad|>``. A target weighs 1 where it is an
assistant token of its example and 0 on prompts, on padding and where the next example
begins, so the loop's weighted loss is the loss on assistant tokens only. Packing is fixed
by the seed; each pass over the rows is reshuffled by ``(seed, epoch)``, so the batch of a
step is a pure function of ``(seed, step)`` and a resumed run sees what the first one would have.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass

import torch

from tasks.problems.chat import render_with_answer
from tasks.problems.item import Problem, system_prompt
from tasks.training.batch import Batch

PAD = "<|finetune_right_pad|>"


@dataclass(frozen=True)
class Example:
    problem: Problem
    input_ids: tuple[int, ...]
    mask: tuple[int, ...]  # 1 on the answer and its <|eot|>

    @property
    def id(self) -> str:
        return self.problem.id

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        """The conversation up to the assistant's answer: where sampling starts."""
        return self.input_ids[: self.mask.index(1)]

    @property
    def capability(self) -> str:
        return self.problem.capability


def pad_id(tokenizer) -> int:
    found = tokenizer.convert_tokens_to_ids(PAD)
    if found is None or found == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {PAD} token")
    return found


def render_examples(tokenizer, problems: list[Problem], seed: int, max_tokens: int) -> tuple[list[Example], int]:
    """Each problem with its reference answer (and a system prompt drawn by seed); ``(examples, too long)``."""
    examples, too_long = [], 0
    for problem in problems:
        rendered = render_with_answer(tokenizer, problem, system_prompt(problem, seed))
        if len(rendered.input_ids) > max_tokens:
            too_long += 1
            continue
        examples.append(Example(problem, tuple(rendered.input_ids), tuple(rendered.assistant_mask)))
    return examples, too_long


def pack(examples: list[Example], seq_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (R, S+1), weights (R, S))``: examples in order, a new row when the next one does not fit."""
    width = seq_len + 1
    rows: list[tuple[list[int], list[int]]] = []
    ids: list[int] = []
    mask: list[int] = []
    for example in examples:
        if len(example.input_ids) > width:
            raise ValueError(f"example {example.id} has {len(example.input_ids)} tokens, more than a row's {width}")
        if len(ids) + len(example.input_ids) > width:
            rows.append((ids, mask))
            ids, mask = [], []
        ids += example.input_ids
        mask += example.mask
    if ids:
        rows.append((ids, mask))
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    masks = torch.zeros((len(rows), width))
    for r, (row_ids, row_mask) in enumerate(rows):
        tokens[r, : len(row_ids)] = torch.tensor(row_ids)
        masks[r, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.float)
    # Target t is token t + 1, so it weighs what the mask says of token t + 1.
    return tokens, masks[:, 1:].contiguous()


class PackedRows:
    """A :class:`~tasks.training.batch.BatchSource` over packed SFT rows."""

    def __init__(self, examples: list[Example], seq_len: int, batch_size: int, seed: int, pad: int) -> None:
        if not examples:
            raise ValueError("no SFT examples to train on")
        order = sorted(examples, key=lambda e: e.id)  # independent of the order they came in
        random.Random(f"sft-pack:{seed}").shuffle(order)
        self.tokens, self.weights = pack(order, seq_len, pad)
        self.batch_size, self.seed = batch_size, seed
        self.examples = len(examples)
        self._orders: dict[int, torch.Tensor] = {}

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def supervised_tokens(self) -> int:
        """Assistant targets in one pass over the rows."""
        return int(self.weights.sum().item())

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            key = int.from_bytes(hashlib.blake2b(f"sft-epoch:{self.seed}:{epoch}".encode(), digest_size=7).digest(), "big")
            self._orders = {epoch: torch.randperm(self.rows, generator=torch.Generator().manual_seed(key)),
                            **{e: o for e, o in self._orders.items() if e == epoch - 1}}
        return self._orders[epoch]

    def batch(self, step: int) -> Batch:
        picked = []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, position = divmod(i, self.rows)
            picked.append(int(self._epoch_order(epoch)[position]))
        index = torch.tensor(picked)
        return Batch(self.tokens[index], Counter(), self.weights[index])
