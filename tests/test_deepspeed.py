"""The DeepSpeed engine: 2 ranks under torchrun on the CPU (gloo), ZeRO-sharded, resumable from herd's safetensors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, descendants, output_of

pytest.importorskip("deepspeed")

STEPS = ["--set", "codistill.scheme=none",  # the student alone: no teacher cache to read
         "--set", "pretrain.steps=12", "--set", "pretrain.seq_len=64", "--set", "pretrain.batch_size=4",
         "--set", "pretrain.checkpoint_every=3", "--set", "pretrain.log_every=1", "--set", "pretrain.warmup_steps=1",
         "--set", "pretrain.engine=deepspeed"]


@pytest.fixture(scope="module")
def tokens(tokenizer_dir) -> str:
    return str(tokenizer_dir)


def torchrun(home: Path, *args: str) -> list[str]:
    """Two ranks through `herd launch`, the code path every pod of a Kubernetes gang runs."""
    return [sys.executable, "-m", "tasks.cli", "launch", "--nproc", "2", "--", *args]


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(torchrun(home, *args), capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "HERD_HOME": str(home)})
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_ranks_train_and_a_killed_gang_resumes_to_the_same_weights(tokens, tmp_path, zero_stage):
    args = ["stage", "pretrain", "--variant", "scout", "--run", "ds", "--in", f"tokens={tokens}", *STEPS,
            "--set", f"pretrain.zero_stage={zero_stage}"]
    straight = Path(output_of(run(tmp_path / "straight", *args)))
    step = json.loads((straight / "step.json").read_text())
    assert step["metrics"]["final_loss"] < step["metrics"]["first_loss"]
    checkpoint = straight / "checkpoints" / "step-00000012"
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "optimizer-rank0.safetensors",
                                                      "optimizer-rank1.safetensors", "state.json", "_COMPLETE"}
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2

    killed_home = tmp_path / "killed"
    process = subprocess.Popen(torchrun(killed_home, *args), cwd=REPO, text=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "HERD_HOME": str(killed_home)},
                               start_new_session=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "checkpoint step-00000003" in line:
            break
    for pid in [process.pid, *descendants(process.pid)]:  # the whole gang: torchrun puts its workers in new sessions
        os.kill(pid, signal.SIGKILL)
    process.wait()
    killed_out = killed_home / "artifacts" / "pretrain" / "scout" / straight.name
    assert not (killed_out / "_SUCCESS").exists()

    retried = run(killed_home, *args)
    resumed_at = re.search(r"resuming from step-(\d+)", retried.stderr)
    assert resumed_at and 3 <= int(resumed_at.group(1)) < 12, retried.stderr[-2000:]
    expected, resumed = load_file(straight / "model.safetensors"), load_file(killed_out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
