"""``bench/gpu_check.py --dry-run``: the GPU check's plumbing on the CPU, so a lent GPU's minutes go to figures."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_gpu_check_dry_run_writes_the_report_a_gpu_run_would(tmp_path):
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    check = json.loads((tmp_path / "gpu_check.json").read_text())
    assert check["dry_run"] and check["environment"]["torch"] and check["shape"]["preset"] == "nano"
    tests = check["tests"]["tests"]
    assert {"test_fp8_training_stays_within_two_percent_of_bf16",
            "test_fp8_converts_attention_shared_and_routed_experts"} <= set(tests)
    assert all(t["outcome"] == "skipped" and "CUDA" in t["message"] for t in tests.values())
    assert (tmp_path / "gpu_tests.xml").exists()
    by_kind = {r["kind"]: r for r in check["train"]}
    for kind in ("bf16", "transformers"):
        assert by_kind[kind]["tokens_per_second"] > 0 and 0 < by_kind[kind]["mfu"] < 1
    assert "FP8-capable GPU" in by_kind["fp8"]["error"]


def test_gpu_check_refuses_to_run_for_real_without_a_gpu(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--dry-run" in result.stderr
    assert not (tmp_path / "gpu_check.json").exists()
