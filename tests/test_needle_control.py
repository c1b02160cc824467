"""The needle metric's positive control: a tiny model trained on retrieval reads near 1 on the grid.

Needle recall at nano size is 0.00 in every cell of the demo's grid. This test shows that
0.00 is a measurement and not a broken metric: the midtrain stage's own trainer and
:func:`needle_grid` (the code the stage reports with), given a model that can learn the task
(a short context, every sequence carrying a needle), reach >= 0.95 at every depth, while the
same model untrained reads ~0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from herd.stages.midtrain import MidtrainConfig
from tasks.midtrain.needles import NeedleMaker, NeedleWindows
from tasks.midtrain.stage import needle_grid
from tasks.training.loop import train
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Short enough to learn in seconds on one CPU thread, long enough for ~40 haystack tokens around the needle.
CONTROL = MidtrainConfig(seq_len=96, batch_size=32, steps=300, lr=3e-3, warmup_steps=10, weight_decay=0.0,
                         precision="fp32", needle_fraction=1.0, needle_loss_weight=20.0, checkpoint_every=10_000,
                         log_every=100, eval_lengths=[96], eval_depths=[0.0, 0.5, 1.0], eval_trials=20)


def test_a_model_trained_on_retrieval_recalls_the_needle_at_every_depth(tokenizer_dir, tmp_path):
    tokens_dir = Path(tokenizer_dir) / "tokens"
    maker = NeedleMaker(Path(tokenizer_dir) / "tokenizer.json")
    torch.manual_seed(0)
    model = tiny_model(maker.tokenizer.get_vocab_size(with_added_tokens=True), dim=64, n_heads=4, n_kv_heads=2,
                       ffn_dim=64, dense_ffn_dim=128)

    untrained = needle_grid(model.eval(), maker, tokens_dir, CONTROL)
    assert max(row["recall"] for row in untrained) <= 0.05

    batches = NeedleWindows(tokens_dir, maker, CONTROL.seq_len, CONTROL.batch_size, CONTROL.seed,
                            CONTROL.needle_fraction, CONTROL.needle_loss_weight)
    train(model.train(), CONTROL, batches, tmp_path, lambda step, metrics: None, label="needle-control")
    trained = needle_grid(model.eval(), maker, tokens_dir, CONTROL)

    with_temperature = [row for row in trained if row["temperature_tuning"]]
    assert [row["depth"] for row in with_temperature] == CONTROL.eval_depths
    assert all(row["recall"] >= 0.95 for row in with_temperature), with_temperature
