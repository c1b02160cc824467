"""GPU-only: bf16 and FP8 (torchao float8) training steps of the real model on a CUDA device.

Skipped on the CPU; run on a lent H100 with ``pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from herd.model import nano
from herd.pipeline import load_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


class RandomTokens:
    def __init__(self, vocab: int, seq: int, batch: int) -> None:
        self.vocab, self.seq, self.batch = vocab, seq, batch

    def batch(self, step: int):
        from collections import Counter

        from tasks.training.batch import Batch

        generator = torch.Generator().manual_seed(step % 4)  # four batches, seen again and again: learnable
        return Batch(torch.randint(0, self.vocab, (self.batch, self.seq + 1), generator=generator), Counter())


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_training_steps_lower_the_loss(precision, tmp_path):
    if precision == "fp8":
        pytest.importorskip("torchao")
        if torch.cuda.get_device_capability() < (8, 9):
            pytest.skip("FP8 needs compute capability 8.9+ (Hopper)")
    from tasks.training.loop import new_model, train

    config = load_config("nano", {"pretrain.precision": precision, "pretrain.steps": 30, "pretrain.seq_len": 256,
                                  "pretrain.batch_size": 8, "pretrain.checkpoint_every": 1000}).pretrain
    model = new_model(nano().model_copy(update={"vocab_size": 1024, "dim": 256}), config)
    history = train(model, config, RandomTokens(1024, 256, 8), tmp_path, lambda step, metrics: None)
    assert all(torch.isfinite(torch.tensor(history.losses)))
    assert history.losses[-1] < history.losses[0] - 0.5
