"""What pruning kept and dropped: counts per difficulty bucket and capability, a plot, examples of each.

    rows = pruning_rows(examples, scores, kept_ids, buckets=4)   # -> reports/sft_pruning.csv
    log_plot("sft_pruning.png", pruning_plot(rows))
    picks = logged_examples(examples, scores, kept_ids, buckets=4, per_bucket=3)   # -> sft_examples.json

Buckets are quantiles of the judge's score by rank (bucket 0 the easiest), so they hold
equal numbers of examples even where scores tie; ties go by id, as in pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tasks.problems.item import CAPABILITIES
from tasks.sft.data import Example
from tasks.sft.judge import easiest_first

TEXT_CHARS = 300


def bucket_of(examples: Sequence[Example], scores: Sequence[float], buckets: int) -> list[int]:
    """Each example's quantile bucket of the score, 0 the easiest."""
    bucket = [0] * len(examples)
    for rank, i in enumerate(easiest_first(examples, scores)):
        bucket[i] = rank * buckets // len(examples)
    return bucket


def pruning_rows(examples: Sequence[Example], scores: Sequence[float], kept_ids: set[str],
                 buckets: int) -> list[dict]:
    """One row per (bucket, capability present): the bucket's score range and the kept and dropped counts."""
    bucket = bucket_of(examples, scores, buckets)
    present = [c for c in CAPABILITIES if any(e.capability == c for e in examples)]
    rows = []
    for b in range(buckets):
        members = [i for i in range(len(examples)) if bucket[i] == b]
        if not members:
            continue
        low, high = min(scores[i] for i in members), max(scores[i] for i in members)
        for capability in present:
            mine = [examples[i] for i in members if examples[i].capability == capability]
            kept = sum(e.id in kept_ids for e in mine)
            rows.append({"bucket": b, "score_min": round(low, 6), "score_max": round(high, 6),
                         "capability": capability, "kept": kept, "dropped": len(mine) - kept, "total": len(mine)})
    return rows


def logged_examples(examples: Sequence[Example], scores: Sequence[float], kept_ids: set[str], buckets: int,
                    per_bucket: int) -> dict:
    """``{"bucket_0": {"kept": [...], "dropped": [...]}, ...}``: the first few of each, easiest first."""
    bucket = bucket_of(examples, scores, buckets)
    picks: dict = {f"bucket_{b}": {"kept": [], "dropped": []} for b in range(buckets)}
    for i in easiest_first(examples, scores):
        side = picks[f"bucket_{bucket[i]}"]["kept" if examples[i].id in kept_ids else "dropped"]
        if len(side) < per_bucket:
            problem = examples[i].problem
            side.append({"id": problem.id, "capability": problem.capability, "difficulty_hint": problem.difficulty,
                         "score": round(scores[i], 6), "prompt": problem.prompt[:TEXT_CHARS],
                         "answer": problem.answer[:TEXT_CHARS]})
    return picks


def hint_agreement(examples: Sequence[Example], scores: Sequence[float]) -> dict[str, float | None]:
    """Spearman correlation of the judge's score with the generator's difficulty hint, per capability."""
    agreement: dict[str, float | None] = {}
    for capability in CAPABILITIES:
        mine = [i for i, e in enumerate(examples) if e.capability == capability]
        if len(mine) < 3:
            continue
        agreement[capability] = _pearson(_ranks([scores[i] for i in mine]),
                                         _ranks([examples[i].problem.difficulty for i in mine]))
    return agreement


def pruning_plot(rows: list[dict]) -> Callable:
    """Stacked bars per bucket, one colour per capability: kept on the left panel, dropped on the right."""

    def draw(figure) -> None:
        bucket_ids = sorted({r["bucket"] for r in rows})
        capabilities = [c for c in CAPABILITIES if any(r["capability"] == c for r in rows)]
        panels = figure.subplots(1, 2, sharey=True)
        for axes, side in zip(panels, ("kept", "dropped")):
            bottom = [0] * len(bucket_ids)
            for capability in capabilities:
                counts = [sum(r[side] for r in rows if r["bucket"] == b and r["capability"] == capability)
                          for b in bucket_ids]
                axes.bar(bucket_ids, counts, bottom=bottom, label=capability)
                bottom = [a + c for a, c in zip(bottom, counts)]
            axes.set_xticks(bucket_ids)
            axes.set_xlabel("judge difficulty bucket (0 = easiest)")
            axes.set_title(f"SFT examples {side}")
        panels[0].set_ylabel("examples")
        panels[1].legend(fontsize=8)

    return draw


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for j in range(start, end + 1):
            ranks[order[j]] = (start + end) / 2
        start = end + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float | None:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sx = sum((a - mx) ** 2 for a in x) ** 0.5
    sy = sum((b - my) ** 2 for b in y) ** 0.5
    if not sx or not sy:
        return None
    return round(sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy), 4)
