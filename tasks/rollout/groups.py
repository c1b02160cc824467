"""From problems to scored groups of completions: what the rollout worker does, and evaluation.

    renderer = ChatRenderer.load(tokenizer_dir)
    groups = generate_groups(model, renderer, problems_by_id, [(problem_id, system), ...],
                             SamplingParams.of(config, n=config.group_size), seed=..., version=...)
    evaluate(model, renderer, eval_problems, SamplingParams.of(config, n=8), k=4, seed=0)

A :class:`Group` is one prompt's ``n`` completions with their behaviour log-probs and
checker rewards; it crosses process boundaries as a dict of tensors, ids and numbers
(:meth:`Group.to_message`). Completions are decoded with special tokens kept, as the
checkers expect (they cut at ``<|eot|>`` themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tasks.model.generate import by_length, sample
from tasks.problems.chat import load_tokenizer, render_prompt
from tasks.problems.checkers import score_all
from tasks.problems.item import Problem
from tasks.rollout.passk import pass_at_k
from tasks.tokenizer.special_tokens import EOT


class ChatRenderer:
    """Prompt ids in Llama 4's chat format (the tokenizer stage's template) and completion text."""

    def __init__(self, tokenizer, folder: Path | None = None) -> None:
        self.tokenizer = tokenizer
        self.folder = folder
        self.eot_id = tokenizer.convert_tokens_to_ids(EOT)
        self._prompts: dict[tuple[str, str | None], list[int]] = {}

    @classmethod
    def load(cls, folder: str | Path) -> "ChatRenderer":
        return cls(load_tokenizer(folder), Path(folder))

    def prompt_ids(self, problem: Problem, system: str | None) -> list[int]:
        key = (problem.id, system)
        if key not in self._prompts:
            self._prompts[key] = render_prompt(self.tokenizer, problem, system).input_ids
        return self._prompts[key]

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


@dataclass(frozen=True)
class SamplingParams:
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seq_len: int
    sample_rows: int = 64
    reward_workers: int = 8
    autocast: torch.dtype = torch.float32

    @classmethod
    def of(cls, config, n: int, autocast: torch.dtype = torch.float32) -> "SamplingParams":
        return cls(n, config.max_new_tokens, config.temperature, config.top_p, config.seq_len, config.sample_rows,
                   config.reward_workers, autocast)


@dataclass
class Group:
    problem_id: str
    capability: str
    tokens: torch.Tensor  # (n, P + N)
    logprobs: torch.Tensor  # (n, N) behaviour log-probs
    mask: torch.Tensor  # (n, N) sampled tokens, up to and including <|eot|>
    prompt_length: int
    rewards: torch.Tensor  # (n,)
    version: int

    def to_message(self) -> dict:
        return {"problem_id": self.problem_id, "capability": self.capability, "tokens": self.tokens,
                "logprobs": self.logprobs, "mask": self.mask, "prompt_length": self.prompt_length,
                "rewards": self.rewards, "version": self.version}

    @classmethod
    def from_message(cls, message: dict) -> "Group":
        return cls(**message)

    def passed(self, threshold: float) -> int:
        return int((self.rewards >= threshold).sum())


def generate_groups(model, renderer: ChatRenderer, problems: dict[str, Problem],
                    requests: Sequence[tuple[str, str | None]], params: SamplingParams, seed: int,
                    version: int) -> tuple[list[Group], int]:
    """Sample and score ``params.n`` completions per request; returns the groups and the prompts skipped as too long.

    Prompts of one length are sampled together, at most ``sample_rows`` rows at a time, each
    batch from its own generator seeded by ``(seed, batch)``: the same seed gives the same groups.
    """
    device = next(model.parameters()).device
    room = params.seq_len - params.max_new_tokens
    prompts = {i: renderer.prompt_ids(problems[pid], system) for i, (pid, system) in enumerate(requests)}
    fitting = [i for i, ids in prompts.items() if len(ids) <= room]
    per_batch = max(1, params.sample_rows // params.n)
    sampled: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}
    was_training = model.training
    model.eval()
    with torch.autocast(device.type, dtype=params.autocast, enabled=params.autocast != torch.float32):
        for batch, members in enumerate(by_length([prompts[i] for i in fitting], per_batch)):
            chunk = [fitting[m] for m in members]
            prompt_BP = torch.tensor([prompts[i] for i in chunk for _ in range(params.n)], device=device)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + batch)
            out = sample(model, prompt_BP, params.max_new_tokens, renderer.eot_id, params.temperature, params.top_p,
                         generator)
            length = out.prompt_length
            for j, i in enumerate(chunk):
                rows = slice(j * params.n, (j + 1) * params.n)
                width = int(out.mask[rows].sum(1).max())
                sampled[i] = (out.tokens[rows, : length + width], out.logprobs[rows, :width],
                              out.mask[rows, :width], length)
    model.train(was_training)
    order = sorted(sampled)
    row_problems, texts = [], []
    for i in order:
        tokens, _, mask, length = sampled[i]
        for row_tokens, row_mask in zip(tokens, mask):
            row_problems.append(problems[requests[i][0]])
            texts.append(renderer.text(row_tokens[length:][row_mask].tolist()))
    rewards = torch.tensor(score_all(row_problems, texts, params.reward_workers), dtype=torch.float32)
    groups = []
    for g, i in enumerate(order):
        tokens, logprobs, mask, length = sampled[i]
        problem = problems[requests[i][0]]
        groups.append(Group(problem.id, problem.capability, tokens, logprobs, mask, length,
                            rewards[g * params.n : (g + 1) * params.n], version))
    return groups, len(requests) - len(order)


def evaluate(model, renderer: ChatRenderer, problems: Sequence[Problem], params: SamplingParams, k: int,
             pass_threshold: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Mean reward, pass@1 and pass@k (unbiased, n = ``params.n``) over ``problems``, with their own system prompts."""
    by_id = {p.id: p for p in problems}
    groups, skipped = generate_groups(model, renderer, by_id, [(p.id, p.system) for p in problems], params, seed, 0)
    if not groups:
        return {"reward": 0.0, "pass@1": 0.0, f"pass@{k}": 0.0, "problems": 0, "skipped_long": skipped}
    passk = [pass_at_k(params.n, g.passed(pass_threshold), k) for g in groups]
    return {
        "reward": float(torch.cat([g.rewards for g in groups]).mean()),
        "pass@1": sum(g.passed(pass_threshold) for g in groups) / (params.n * len(groups)),
        f"pass@{k}": sum(passk) / len(passk),
        "problems": len(groups),
        "skipped_long": skipped,
    }
