"""The prompt pool of the RL curriculum, scored by pass@k (:func:`tasks.rollout.passk.pass_at_k`).

    pool = PromptPool(problems, config)
    wanted = pool.request(round)        # [(problem id, system prompt)]: what to sample this round
    counts = pool.update(scored)        # re-score: drop solved prompts, retire stuck ones, refill
    chosen = pool.select(groups, keep, round)  # the groups to train on, capabilities mixed

Under ``curriculum="passk"`` (LLAMA4_SPEC §2.5, §4) the pool holds ``pool_size`` active
prompts drawn from a seeded reservoir of all problems. Each round re-scores the active
prompts with the current policy (their groups' pass@k, n = group_size); a prompt whose
pass@k reaches ``easy_threshold`` is solved and leaves for good; one whose group had zero
advantage ``retire_after`` rounds in a row goes back to the end of the reservoir (it may be
learnable later) and a fresh prompt takes its slot. What stays is medium-to-hard for the
policy of the moment, so the curriculum hardens as the policy improves. Training takes
``prompts_per_round`` of the groups with a signal, round-robin over capabilities.
System prompts vary by round (:func:`tasks.problems.item.system_prompt`).

Under ``curriculum="uniform"`` (the baseline) each round samples ``prompts_per_round``
problems uniformly, drops nothing and trains on every group.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Sequence, TypeVar

from herd.stages.rl import RLConfig
from tasks.problems.item import Problem, system_prompt
from tasks.rollout.passk import pass_at_k

T = TypeVar("T")


def stratified(items: Sequence[T], capability: Callable[[T], str], count: int, rng: random.Random) -> list[T]:
    """Up to ``count`` items taken round-robin over capabilities (in a random order), random within each."""
    by_capability: dict[str, list[T]] = defaultdict(list)
    for item in items:
        by_capability[capability(item)].append(item)
    buckets = [by_capability[name] for name in sorted(by_capability)]
    rng.shuffle(buckets)
    for bucket in buckets:
        rng.shuffle(bucket)
    chosen: list[T] = []
    while len(chosen) < count and any(buckets):
        for bucket in buckets:
            if bucket and len(chosen) < count:
                chosen.append(bucket.pop())
    return chosen


class PromptPool:
    def __init__(self, problems: Sequence[Problem], config: RLConfig) -> None:
        self.config = config
        self.problems = {p.id: p for p in problems}
        order = sorted(self.problems)
        random.Random(f"pool:{config.seed}").shuffle(order)
        self.reservoir: list[str] = order
        self.active: list[str] = []
        self.solved: list[str] = []
        self.stats: dict[str, dict] = {}
        self.totals = {"dropped_easy": 0, "retired": 0}
        if config.curriculum == "passk":
            self._refill()

    @property
    def size(self) -> int:
        return len(self.active) if self.config.curriculum == "passk" else len(self.problems)

    def _rng(self, purpose: str, round_: int) -> random.Random:
        return random.Random(f"{purpose}:{self.config.seed}:{round_}")

    def request(self, round_: int) -> list[tuple[str, str | None]]:
        """The prompts to sample in ``round_``, each with the system prompt it gets this round."""
        config = self.config
        if config.curriculum == "uniform":
            everything = sorted(self.problems)
            ids = self._rng("uniform", round_).sample(everything, min(config.prompts_per_round, len(everything)))
        elif round_ % config.rescore_every == 0:
            ids = list(self.active)
        else:
            learnable = [i for i in self.active if self._learnable(i)] or list(self.active)
            ids = stratified(learnable, lambda i: self.problems[i].capability, config.prompts_per_round,
                             self._rng("between", round_))
        variation = config.seed * 100_003 + round_
        return [(i, system_prompt(self.problems[i], variation)) for i in ids]

    def _learnable(self, problem_id: str) -> bool:
        stats = self.stats.get(problem_id)
        return stats is None or stats["zero_advantage_streak"] == 0

    def update(self, scored: Sequence[tuple[str, Sequence[float], bool]], version: int) -> dict[str, int]:
        """Record ``(problem id, rewards of its group, group has zero advantage)``; returns this round's drops."""
        config = self.config
        dropped = {"dropped_easy": 0, "retired": 0}
        for problem_id, rewards, zero_advantage in scored:
            passed = sum(r >= config.pass_threshold for r in rewards)
            previous = self.stats.get(problem_id, {})
            streak = previous.get("zero_advantage_streak", 0) + 1 if zero_advantage else 0
            self.stats[problem_id] = {
                "n": len(rewards), "passed": passed, "pass@1": passed / len(rewards),
                "pass@k": pass_at_k(len(rewards), passed, config.k), "zero_advantage_streak": streak,
                "version": version,
            }
            if config.curriculum != "passk" or problem_id not in self.active:
                continue
            if self.stats[problem_id]["pass@k"] >= config.easy_threshold:
                self.active.remove(problem_id)
                self.solved.append(problem_id)
                dropped["dropped_easy"] += 1
            elif config.retire_after and streak >= config.retire_after:
                self.active.remove(problem_id)
                self.reservoir.append(problem_id)
                self.stats[problem_id]["zero_advantage_streak"] = 0
                dropped["retired"] += 1
        for key, count in dropped.items():
            self.totals[key] += count
        if config.curriculum == "passk":
            self._refill()
        return dropped

    def _refill(self) -> None:
        while len(self.active) < self.config.pool_size and self.reservoir:
            candidate = self.reservoir.pop(0)
            if candidate not in self.active:
                self.active.append(candidate)

    def select(self, groups: Sequence[T], keep: Sequence[bool], round_: int) -> list[T]:
        """The groups to train on: under passk those with a signal whose prompt is not solved, capabilities mixed."""
        if self.config.curriculum == "uniform":
            return list(groups)
        easy = self.config.easy_threshold
        candidates = [g for g, signal in zip(groups, keep)
                      if signal and self.stats.get(g.problem_id, {}).get("pass@k", 0.0) < easy]
        return stratified(candidates, lambda g: g.capability, self.config.prompts_per_round,
                          self._rng("select", round_))

    def state_dict(self) -> dict:
        return {"reservoir": self.reservoir, "active": self.active, "solved": self.solved, "stats": self.stats,
                "totals": self.totals}

    def load_state_dict(self, state: dict) -> None:
        missing = set(state["active"]) - set(self.problems)
        if missing:
            raise ValueError(f"the saved pool names {len(missing)} problems this run was not given, "
                             f"e.g. {min(missing)}")
        self.reservoir, self.active, self.solved = state["reservoir"], state["active"], state["solved"]
        self.stats, self.totals = state["stats"], state["totals"]
