"""What a pipeline run produced, read back from the step records."""

from __future__ import annotations

import json
from typing import Any

from herd.pipeline import STAGES
from tasks.runtime import storage
from tasks.runtime.step import STEP_FILE, SUCCESS


def computed_steps(run_id: str, artifact_root: str) -> list[dict[str, Any]]:
    """Step records of the stage outputs this run computed (skipped stages were computed by earlier runs)."""
    steps = []
    for spec in STAGES:
        for folder in storage.list_dirs(storage.join(artifact_root, spec.artifact_path)):
            if not storage.exists(storage.join(folder, SUCCESS)):
                continue
            step = json.loads(storage.read_text(storage.join(folder, STEP_FILE)))
            if step.get("run_id") == run_id:
                steps.append(step)
    return steps


def pipeline_summary(run_id: str, artifact_root: str) -> dict[str, float]:
    steps = computed_steps(run_id, artifact_root)
    return {
        "stages_computed": float(len(steps)),
        "stage_wall_seconds": float(sum(s["wall_seconds"] for s in steps)),
        "gpu_hours": float(sum(s.get("gpu_hours", 0.0) for s in steps)),
    }
