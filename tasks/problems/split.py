"""Train/eval split by stable hash, independent of the generation seed.

Synthetic items go by their content id; UDHR items by their article, so that no article
(in any language, in any task) is on both sides. Neither depends on the seed, so eval
items stay eval items when the training set is regenerated with another seed.
"""

from __future__ import annotations

from typing import Iterable, Literal

from tasks.problems.item import Problem, stable_fraction

Split = Literal["train", "eval"]


def heldout_articles(articles: Iterable[str], fraction: float) -> frozenset[str]:
    """The ``fraction`` of articles (at least one, never all) with the lowest hash."""
    ranked = sorted(set(articles), key=lambda a: stable_fraction(f"split:article:{a}"))
    if len(ranked) < 2:
        return frozenset()
    keep = min(len(ranked) - 1, max(1, round(fraction * len(ranked))))
    return frozenset(ranked[:keep])


def split_of(problem: Problem, fraction: float, eval_articles: frozenset[str]) -> Split:
    if "article" in problem.meta:
        return "eval" if problem.meta["article"] in eval_articles else "train"
    return "eval" if stable_fraction(f"split:{problem.id}") < fraction else "train"
