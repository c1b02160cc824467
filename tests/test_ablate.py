"""``herd ablate``: refuses clearly without the pipeline's outputs; its summary averages each arm over seeds."""

from __future__ import annotations

import pytest

from conftest import herd
from tasks.ablate import format_tables, summary_metrics


def test_ablate_without_pipeline_outputs_names_what_is_missing(herd_home):
    result = herd("ablate", "--only", "sft", "--seeds", "0", check=False)
    assert result.returncode == 2
    assert "ablate needs the complete outputs of" in result.stderr and "scout.midtrain" in result.stderr


def test_summary_averages_each_arm_over_seeds():
    rows = [{"arm": "pruned", "seed": 0, "hard_loss": 5.0}, {"arm": "pruned", "seed": 1, "hard_loss": 6.0},
            {"arm": "unpruned", "seed": 0, "hard_loss": 7.0}]
    metrics = summary_metrics("sft", rows)
    assert metrics == {"sft/pruned/hard_loss": pytest.approx(5.5), "sft/unpruned/hard_loss": 7.0}
    assert "== sft" in format_tables({"sft": rows}) and "5.0000" in format_tables({"sft": rows})
