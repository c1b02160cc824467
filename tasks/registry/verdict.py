"""The verdict on a candidate: each figure against its bar and against the champion's value.

    figures = figures_of({"sft": sft_step["metrics"], "rl": rl_step["metrics"]})
    rows = judge(config.for_variant("scout"), config.champion_tolerance, figures, champion_figures,
                 present={"sft", "rl"})
    verdict(rows)   # "pass" or "fail"

The gate stage judges with it when it registers a candidate (:mod:`tasks.gate.stage`), and promotion
judges the gate's rows again when the champion has moved since (:func:`rejudge`, :mod:`tasks.registry.promote`).

A figure whose stage is not among the gate's inputs (``dpo.*`` for Behemoth, which has no
DPO) is ``n/a``. A figure whose stage is there but whose metric is not fails: a renamed
metric must not pass a gate by vanishing. A champion without the figure (registered
before the figure was gated) is compared on the bar alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from herd.stages.gate import Threshold
from tasks.runtime.tracking import metric_name

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n/a"
# The gate's report in its output folder: its rows, figures and verdict, as promotion reads them.
REPORT_JSON = "gate.json"
# Figures are rounded summaries: a difference this small is equality, not a regression.
EPSILON = 1e-9


@dataclass(frozen=True)
class Row:
    figure: str
    bound: str  # "min" or "max"
    threshold: float
    tolerance: float
    candidate: float | None
    champion: float | None
    verdict: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def figures_of(metrics_by_stage: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"<stage>.<metric>": value}`` for every numeric metric (booleans and text left out)."""
    figures = {}
    for stage, metrics in metrics_by_stage.items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                figures[f"{stage}.{metric_name(key)}"] = float(value)
    return figures


def judge(thresholds: Mapping[str, Threshold], default_tolerance: float, candidate: Mapping[str, float],
          champion: Mapping[str, float] | None, present: set[str],
          withheld: Mapping[str, str] | None = None) -> list[Row]:
    """One row per gated figure, in the order of ``thresholds``; ``champion`` None when there is none.

    ``withheld``: figures that count as missing, with why (:mod:`tasks.registry.health`).
    """
    withheld = withheld or {}
    rows = []
    for figure, threshold in thresholds.items():
        bound = "min" if threshold.higher_is_better else "max"
        tolerance = default_tolerance if threshold.tolerance is None else threshold.tolerance
        value = candidate.get(figure)
        theirs = (champion or {}).get(figure)
        stage = figure.partition(".")[0]
        if stage not in present:
            verdict, reason = NOT_APPLICABLE, f"no {stage} stage feeds this gate"
        elif figure in withheld:
            verdict, reason = FAIL, f"counts as missing: {withheld[figure]}"
        elif value is None:
            verdict, reason = FAIL, f"{stage} reported no {figure.partition('.')[2]}"
        elif not math.isfinite(value):
            verdict, reason = FAIL, f"not a finite number ({value})"
        elif threshold.higher_is_better and value < threshold.bar - EPSILON:
            verdict, reason = FAIL, f"below the minimum {threshold.bar:g}"
        elif not threshold.higher_is_better and value > threshold.bar + EPSILON:
            verdict, reason = FAIL, f"above the maximum {threshold.bar:g}"
        elif theirs is not None and _worse_by(value, theirs, threshold) > tolerance + EPSILON:
            verdict, reason = FAIL, (f"worse than the champion's {theirs:g} by {_worse_by(value, theirs, threshold):g}"
                                     f" (tolerance {tolerance:g})")
        else:
            verdict = PASS
            reason = "within the bar" + ("" if theirs is None else " and the champion's tolerance")
        rows.append(Row(figure, bound, threshold.bar, tolerance, value, theirs, verdict, reason))
    return rows


def _worse_by(value: float, champion: float, threshold: Threshold) -> float:
    return champion - value if threshold.higher_is_better else value - champion


def verdict(rows: list[Row]) -> str:
    return FAIL if any(row.verdict == FAIL for row in rows) else PASS


def failed(rows: list[Row]) -> list[str]:
    return [row.figure for row in rows if row.verdict == FAIL]


def rejudge(report: dict, champion_figures: dict[str, float]) -> list[Row]:
    """The gate's figures and bars (its ``REPORT_JSON``), judged against another champion."""
    thresholds = {row["figure"]: Threshold(**{row["bound"]: row["threshold"]}, tolerance=row["tolerance"])
                  for row in report["rows"]}
    present = {row["figure"].partition(".")[0] for row in report["rows"] if row["verdict"] != NOT_APPLICABLE}
    return judge(thresholds, 0.0, report["figures"], champion_figures, present, report.get("withheld", {}))
