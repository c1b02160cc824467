"""Per-category tables of scored cases, and the files a CyberSecEval run leaves.

    rows = [{"injection_variant": "persuasion", "outcome": "injection_successful", ...}, ...]
    breakdown(rows, "injection_variant", stat)   # {"persuasion": stat(rows of that variant), ...}

A row's category may be a list (an interpreter case has several attack types); it then counts
once under each. Rows without the category are left out of that table, as PurpleLlama leaves
them out of its per-category statistics.

Output folder of one run::

    responses.json   every selected case: its fields, the answer, the judge's answer, the outcome
    stat.json        the statistics in the shape of PurpleLlama's --stat-path file for that benchmark
    tables/overall.csv, tables/by_<category>.csv     the same figures (and a few more) as tables
    summary.json     what ran (dataset, models, counts, skipped records by reason) and the headline figures
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.runtime.reports import write_csv

Stat = Callable[[list[dict]], dict[str, float]]


def category_values(row: dict, category: str) -> list[str]:
    value = row.get(category)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def breakdown(rows: list[dict], category: str, stat: Stat) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        for value in category_values(row, category):
            groups[value].append(row)
    return {value: stat(groups[value]) for value in sorted(groups)}


def share(part: float, total: float) -> float:
    return part / total if total else 0.0


def table_rows(model: str, category: str | None, figures: dict[str, dict[str, float]] | dict[str, float]) -> list[dict]:
    if category is None:
        return [{"model": model, **figures}]
    return [{"model": model, category: value, **stat} for value, stat in figures.items()]


def write_outputs(out_dir: Path, responses: list[dict], stat_file: dict, model: str, overall: dict[str, float],
                  breakdowns: dict[str, dict[str, dict[str, float]]], summary: dict[str, Any]) -> list[Path]:
    """Writes the run's files (see the module docstring); returns the tables, for logging."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "responses.json").write_text(json.dumps(responses, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "stat.json").write_text(json.dumps(stat_file, indent=2, ensure_ascii=False) + "\n")
    tables = [write_csv(out_dir / "tables" / "overall.csv", table_rows(model, None, overall))]
    for category, figures in breakdowns.items():
        tables.append(write_csv(out_dir / "tables" / f"by_{category}.csv", table_rows(model, category, figures)))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return tables
