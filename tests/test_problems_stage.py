"""The ``problems`` stage through the CLI: sets written by the contract, held out by article, counted."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import herd, output_of


def test_problems_stage_writes_train_and_eval_sets(udhr_subset, herd_home):
    out = Path(output_of(herd("stage", "problems", "--run", "pr", "--in", f"udhr={udhr_subset}",
                              "--set", "problems.count_arithmetic=50", "--set", "problems.count_strings=50",
                              "--set", "problems.count_code=10", "--set", "problems.count_translate=30",
                              "--set", "problems.count_language_id=30", "--set", "problems.count_continue=30")))
    assert (out / "_SUCCESS").exists()
    train = [json.loads(line) for line in (out / "train.jsonl").open()]
    evaluation = [json.loads(line) for line in (out / "eval.jsonl").open()]
    assert {p["capability"] for p in train} == {"arithmetic", "strings", "code", "translate", "language_id", "continue"}
    assert not {p["id"] for p in train} & {p["id"] for p in evaluation}
    step = json.loads((out / "step.json").read_text())
    assert step["metrics"]["problems_train"] == len(train) and step["metrics"]["problems_eval"] == len(evaluation)
    assert (out / "reports" / "problems.csv").exists()
    again = herd("stage", "problems", "--run", "pr2", "--in", f"udhr={udhr_subset}",
                 "--set", "problems.count_arithmetic=50", "--set", "problems.count_strings=50",
                 "--set", "problems.count_code=10", "--set", "problems.count_translate=30",
                 "--set", "problems.count_language_id=30", "--set", "problems.count_continue=30")
    assert "skipping" in again.stderr
