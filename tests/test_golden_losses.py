"""Golden loss curves, as torchtitan keeps them (``tests/assets/losses/``): nano pretraining and SFT run through
their stages on one CPU thread, and each step's loss is compared with the stored curve, so that a change to the
numerics of training (model, data order, optimizer, schedule, loss) fails here even when the loss still falls.

A change that is meant to move the curves rewrites them, and the diff of the two files goes with it:

    HERD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_losses.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import herd, output_of

ASSETS = Path(__file__).parent / "assets" / "losses"
UPDATE = os.environ.get("HERD_UPDATE_GOLDEN") == "1"
# Two runs in separate processes agree bit for bit here (fixed seeds; one thread or two gave the same curves).
# 1e-5 relative leaves room for another CPU's kernels rounding float32 sums in another order (~1e-7 an operation),
# and is still tight: the learning rate 1% higher moves pretraining's losses by 1.3e-5 at step 2 and by up to 8e-4
# by step 10.
RTOL = 1e-5
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# The nano scout on the labels alone (no teacher): every step logged.
PRETRAIN = ["--variant", "scout", "--set", "codistill.scheme=none", "--set", "pretrain.steps=10",
            "--set", "pretrain.seq_len=64", "--set", "pretrain.batch_size=2", "--set", "pretrain.warmup_steps=2",
            "--set", "pretrain.log_every=1"]
PROBLEMS = ["--set", "problems.count_arithmetic=20", "--set", "problems.count_strings=20",
            "--set", "problems.count_code=5", "--set", "problems.count_translate=10",
            "--set", "problems.count_language_id=10", "--set", "problems.count_continue=10"]
# SFT of that model with itself as the judge, without the unpruned arm (a second run, not recorded here).
SFT = ["--variant", "scout", "--set", "sft.steps=8", "--set", "sft.seq_len=128", "--set", "sft.batch_size=4",
       "--set", "sft.warmup_steps=2", "--set", "sft.log_every=1", "--set", "sft.compare_unpruned=false",
       "--set", "sft.eval_max_items=4", "--set", "sft.max_new_tokens=4"]


def losses(output: str) -> list[tuple[int, float]]:
    """Each step's loss as the stage logged it to MLflow (the store of ``HERD_HOME``)."""
    from tasks.runtime import tracking

    run_id = json.loads((Path(output) / "step.json").read_text())["mlflow_run_id"]
    return sorted((metric.step, metric.value) for metric in tracking.client().get_metric_history(run_id, "loss"))


def check(curve: list[tuple[int, float]], name: str) -> None:
    """``curve`` is the stored one, step for step, within :data:`RTOL` (with ``HERD_UPDATE_GOLDEN=1``: store it)."""
    path = ASSETS / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{step} {loss!r}\n" for step, loss in curve))
        return
    golden = [(int(step), float(loss)) for step, loss in (line.split() for line in path.read_text().splitlines())]
    how = ("if the change is meant, rewrite the curves: "
           "HERD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_losses.py")
    assert [step for step, _ in curve] == [step for step, _ in golden], f"other steps than {path}; {how}"
    off = [(step, now, want) for (step, now), (_, want) in zip(curve, golden) if now != pytest.approx(want, rel=RTOL)]
    assert not off, f"losses (step, now, stored) differ from {path} by more than {RTOL:g} relative: {off}; {how}"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One HERD_HOME for the module: SFT starts from the pretrained model."""
    return tmp_path_factory.mktemp("golden-home")


@pytest.fixture
def stage(home, monkeypatch) -> Callable[..., str]:
    """Runs ``herd stage`` on one thread into ``home``, and returns its output."""
    monkeypatch.setenv("HERD_HOME", str(home))
    return lambda *args: output_of(herd("stage", *args, "--run", "golden", env=ONE_THREAD))


def test_nano_pretraining_follows_its_golden_loss_curve(stage, tokenizer_dir):
    check(losses(stage("pretrain", "--in", f"tokens={tokenizer_dir}", *PRETRAIN)), "pretrain_nano.txt")


def test_nano_sft_follows_its_golden_loss_curve(stage, tokenizer_dir, udhr_subset):
    model = stage("pretrain", "--in", f"tokens={tokenizer_dir}", *PRETRAIN)  # reused when the test above ran
    problems = stage("problems", "--in", f"udhr={udhr_subset}", *PROBLEMS)
    check(losses(stage("sft", "--in", f"model={model}", "--in", f"judge={model}", "--in", f"tokens={tokenizer_dir}",
                       "--in", f"problems={problems}", *SFT)), "sft_nano.txt")
