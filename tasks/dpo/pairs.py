"""On-policy preference pairs: sample completions with the policy, score them by checker, best against worst.

    pairs, counts = build_pairs(policy, renderer, problems, DPOConfig())

Each prompt gets ``samples_per_prompt`` completions (the same sampler and checkers as RL).
Sorted by reward, the i-th best is chosen against the i-th worst for i < ``pairs_per_prompt``;
a pair whose rewards are equal says nothing and is skipped. The pair keeps the sampled
token ids themselves, not a re-tokenisation of their text, so DPO scores exactly what the
policy produced. No judge model exists at nano scale; the checkers are the judge.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from herd.stages.dpo import DPOConfig
from tasks.problems.item import Problem, system_prompt
from tasks.rollout.groups import ChatRenderer, Group, SamplingParams, generate_groups


@dataclass(frozen=True)
class Pair:
    problem_id: str
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    chosen_reward: float
    rejected_reward: float


def pairs_of(group: Group, count: int) -> tuple[list[Pair], int]:
    """Up to ``count`` pairs from one scored group, and how many were skipped as ties."""
    rewards = group.rewards.tolist()
    order = sorted(range(len(rewards)), key=lambda j: (-rewards[j], j))
    P = group.prompt_length
    prompt = group.tokens[0, :P].tolist()

    def completion(row: int) -> list[int]:
        return group.tokens[row, P : P + int(group.mask[row].sum())].tolist()

    pairs, ties = [], 0
    for i in range(count):
        best, worst = order[i], order[-1 - i]
        if rewards[best] <= rewards[worst]:
            ties += 1
            continue
        pairs.append(Pair(group.problem_id, prompt, completion(best), completion(worst), rewards[best], rewards[worst]))
    return pairs, ties


@torch.no_grad()
def build_pairs(policy, renderer: ChatRenderer, problems: Sequence[Problem], config: DPOConfig,
                autocast: torch.dtype = torch.float32) -> tuple[list[Pair], dict[str, int]]:
    chosen = list(problems)[: config.prompts]
    params = SamplingParams.of(config, config.samples_per_prompt, autocast)
    requests = [(p.id, system_prompt(p, config.seed)) for p in chosen]
    groups, skipped = generate_groups(policy, renderer, {p.id: p for p in chosen}, requests, params, config.seed, 0)
    pairs, ties = [], 0
    for group in groups:
        made, tied = pairs_of(group, config.pairs_per_prompt)
        pairs += made
        ties += tied
    return pairs, {"prompts": len(groups), "pairs": len(pairs), "ties_skipped": ties, "skipped_long": skipped}


def write_pairs(pairs: Sequence[Pair], counts: dict[str, int], path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"counts": counts, "pairs": [asdict(p) for p in pairs]}))
    os.replace(partial, path)


def read_pairs(path: Path) -> tuple[list[Pair], dict[str, int]]:
    data = json.loads(path.read_text())
    return [Pair(**p) for p in data["pairs"]], data["counts"]
