"""The problem record: a prompt, a reference answer, and how to check any answer.

A checker is named and parametrised by data (``checker``, ``checker_args``), never by
code, so an item is one JSON line that round-trips and the RL stage can score a sampled
completion with nothing but the line (see :func:`tasks.problems.checkers.score`).

The id hashes what the question and its answer are, not the system prompt: RL varies
system prompts over the same item, and the split must not see two items there.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

Capability = Literal["arithmetic", "strings", "code", "translate", "language_id", "continue"]
CAPABILITIES: tuple[str, ...] = Capability.__args__
CheckerName = Literal["exact", "numeric", "language_id", "chrf", "code"]

# Neutral instructions that change nothing about the task; RL samples among them (and no
# system prompt at all) so that the policy does not come to depend on one wording.
SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are a careful assistant. Answer accurately and briefly.",
    "Answer the request. Keep the reply short.",
    "You are a concise, precise assistant.",
    "Think about the request, then give only the answer.",
)


class Problem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    capability: Capability
    difficulty: int = Field(ge=1, le=5, description="1 easiest; comparable within a capability.")
    prompt: str
    answer: str = Field(description="The reference answer SFT trains on; the checker gives it 1.0.")
    checker: CheckerName
    checker_args: dict[str, Any]
    system: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="What generated it: family, digits, lang, article...")


def content_id(capability: str, prompt: str, answer: str, checker: str, checker_args: dict[str, Any]) -> str:
    body = json.dumps([capability, prompt, answer, checker, checker_args], sort_keys=True, ensure_ascii=False)
    return f"{capability}-{hashlib.blake2b(body.encode(), digest_size=8).hexdigest()}"


def make_problem(
    capability: str,
    difficulty: int,
    prompt: str,
    answer: str,
    checker: str,
    checker_args: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Problem:
    return Problem(
        id=content_id(capability, prompt, answer, checker, checker_args),
        capability=capability,
        difficulty=max(1, min(5, difficulty)),
        prompt=prompt,
        answer=answer,
        checker=checker,
        checker_args=checker_args,
        meta=meta or {},
    )


def stable_fraction(key: str) -> float:
    """A number in [0, 1) that depends only on ``key``: the same on every machine and run."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def system_prompt(problem: Problem, seed: int) -> str | None:
    """The item's own system prompt, or one drawn from the pool (or none) by ``(seed, id)``."""
    if problem.system is not None:
        return problem.system
    slot = int(stable_fraction(f"system:{seed}:{problem.id}") * (len(SYSTEM_PROMPTS) + 1))
    return SYSTEM_PROMPTS[slot] if slot < len(SYSTEM_PROMPTS) else None


def write_jsonl(problems: Iterable[Problem], path: Path) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for problem in problems:
            out.write(problem.model_dump_json() + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[Problem]:
    with path.open(encoding="utf-8") as lines:
        return [Problem.model_validate_json(line) for line in lines if line.strip()]


def collect(draw: Callable[[random.Random], Problem | None], count: int, seed: int, salt: str) -> list[Problem]:
    """``count`` distinct problems from a seeded draw (which may miss: None); fewer when there are fewer."""
    rng = random.Random(f"{salt}:{seed}")
    found: dict[str, Problem] = {}
    for _ in range(20 * count + 100):
        if len(found) >= count:
            break
        problem = draw(rng)
        if problem is not None:
            found.setdefault(problem.id, problem)
    return list(found.values())
