"""Checkers by name: a raw completion and the item's checker args in, a reward in [0, 1] out.

    score(problem, completion) -> float                 # what RL, DPO and the SFT judge call
    score_all(problems, completions, workers) -> list    # a batch, code checks in parallel

| name | args | reward |
|---|---|---|
| ``exact`` | answer, case_sensitive | 1 if the reply (or its "Answer: ..." part) is the answer, tidied |
| ``numeric`` | answer, rel_tol | 1 if the stated (else last) number equals the answer |
| ``language_id`` | answer (ISO 639-3) | 1 for the code (any spelling of the same tag), 0.5 for its macrolanguage |
| ``chrf`` | reference | chrF of the reply against the reference: partial credit |
| ``code`` | entry, tests, time_limit_s, memory_mb, allow_unconfined | share of tests the code passes, run in :mod:`sandbox` |
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from tasks.problems import extract
from tasks.problems.chrf import chrf
from tasks.problems.item import Problem
from tasks.problems.sandbox import confinement, run_code


def check_exact(completion: str, answer: str, case_sensitive: bool = True) -> float:
    fold = (lambda s: s) if case_sensitive else str.casefold
    return float(any(fold(c) == fold(answer) for c in extract.answer_candidates(completion)))


def check_numeric(completion: str, answer: float, rel_tol: float = 1e-9) -> float:
    value = extract.final_number(completion)
    return float(value is not None and math.isclose(value, answer, rel_tol=rel_tol, abs_tol=1e-9))


@functools.lru_cache(maxsize=4096)
def _language(tag: str) -> tuple[str, str] | None:
    """``(ISO 639-3, macrolanguage)`` for a code in any spelling (``fr``, ``fra``, ``fre``), or None."""
    import langcodes

    tag = tag.strip().strip(".").replace("_", "-")
    if not tag or not langcodes.tag_is_valid(tag):
        return None
    language = langcodes.Language.get(tag)
    if not language.language or language.language == "und":
        return None
    return language.to_alpha3(), langcodes.standardize_tag(language.language, macro=True).split("-")[0]


def check_language_id(completion: str, answer: str) -> float:
    expected = _language(answer)
    best = 0.0
    for candidate in extract.answer_candidates(completion):
        said = _language(candidate) if len(candidate) <= 16 else None
        if said and expected:
            best = max(best, 1.0 if said[0] == expected[0] else 0.5 if said[1] == expected[1] else 0.0)
    return best


def check_chrf(completion: str, reference: str) -> float:
    return chrf(extract.body(completion), reference)


def check_code(completion: str, entry: str, tests: list[dict[str, Any]], time_limit_s: float = 2.0,
               memory_mb: int = 256, allow_unconfined: bool = False) -> float:
    code = extract.code_block(completion, entry)
    if not code.strip() or not tests:
        return 0.0
    run = run_code(code, entry, [t["args"] for t in tests], time_limit_s, memory_mb, allow_unconfined)
    passed = sum("value" in out and _same(out["value"], t["expected"]) for out, t in zip(run.outputs, tests))
    return passed / len(tests)


def _same(got: Any, expected: Any) -> bool:
    # Results crossed JSON, so tuples arrive as lists; floats compare with a tolerance.
    if isinstance(expected, float) or isinstance(got, float):
        number = isinstance(got, (int, float)) and not isinstance(got, bool)
        return number and math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(_same, got, expected))
    return type(got) is type(expected) and got == expected


CHECKERS: dict[str, Callable[..., float]] = {
    "exact": check_exact,
    "numeric": check_numeric,
    "language_id": check_language_id,
    "chrf": check_chrf,
    "code": check_code,
}


def check(checker: str, checker_args: dict[str, Any], completion: str) -> float:
    try:
        fn = CHECKERS[checker]
    except KeyError:
        raise ValueError(f"unknown checker {checker!r}; checkers: {', '.join(CHECKERS)}") from None
    return max(0.0, min(1.0, float(fn(completion, **checker_args))))


def score(problem: Problem, completion: str) -> float:
    """The reward of a raw completion (special tokens, fences and all) for ``problem``."""
    return check(problem.checker, problem.checker_args, completion)


def score_all(problems: Sequence[Problem], completions: Sequence[str], workers: int = 8) -> list[float]:
    """Rewards for a batch (an RL group, a DPO candidate set), in order.

    Threads suffice: a code check waits on its sandbox process, and the others take microseconds.
    """
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(score, problems, completions))


def code_confinement(problems: Sequence[Problem]) -> dict[str, Any]:
    """For a stage's record: how code checks are confined here (``{}`` where no problem is code).

    Raises :class:`tasks.problems.sandbox.Unconfined` at the stage's start, not hours in, where
    they cannot be confined and the problems were not built with ``allow_unconfined``.
    """
    code = [p for p in problems if p.checker == "code"]
    if not code:
        return {}
    return confinement(any(p.checker_args.get("allow_unconfined", False) for p in code))
