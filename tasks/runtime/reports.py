"""Report tables a stage writes into its output and logs to its MLflow run."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def log_csv(ctx, name: str, rows: list[dict]) -> Path:
    """``reports/NAME`` in the stage output, and the same file under ``reports/`` in MLflow."""
    path = write_csv(ctx.workdir / "reports" / name, rows)
    ctx.tracker.log_artifact(path, "reports")
    return path
