"""Mid-training: needle sequences are built as specified, the stage continues a pretrained student at a longer
context, reports the retrieval grid, and exports a checkpoint transformers loads with the same logits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import herd, output_of
from herd.config import ConfigError
from herd.pipeline import load_config
from tasks.midtrain.needles import NeedleMaker, NeedleWindows

PRETRAIN = ["--set", "pretrain.seq_len=64", "--set", "pretrain.batch_size=2", "--set", "pretrain.steps=6",
            "--set", "pretrain.warmup_steps=1", "--set", "codistill.scheme=none"]
MIDTRAIN = ["--set", "midtrain.seq_len=256", "--set", "midtrain.batch_size=2", "--set", "midtrain.steps=4",
            "--set", "midtrain.warmup_steps=1", "--set", "midtrain.eval_lengths=[128,256,512]",
            "--set", "midtrain.eval_depths=[0.0,1.0]", "--set", "midtrain.eval_trials=2"]


@pytest.fixture(scope="module")
def tokens(tokenizer_dir) -> str:
    return str(tokenizer_dir)


def test_a_needle_sits_at_its_depth_and_the_key_ends_the_sequence(tokens):
    maker = NeedleMaker(Path(tokens) / "tokenizer.json")
    haystack = np.arange(5000, 5000 + 400) % 900 + 10
    needle_ids = maker.encode(" The pass key is 12345. Remember it. 12345 is the pass key. ")
    for depth in (0.0, 0.5, 1.0):
        made = maker.make(haystack, 300, depth, 12345)
        assert len(made.tokens) == 300
        assert made.tokens[made.answer] == maker.encode(" 12345")
        starts = [i for i in range(300) if made.tokens[i : i + len(needle_ids)] == needle_ids]
        assert len(starts) == 1
        room = 300 - len(needle_ids) - len(maker.encode(" What is the pass key? The pass key is")) - len(made.tokens[made.answer])
        assert starts[0] == round(depth * room)
    with pytest.raises(ValueError, match="cannot hold"):
        maker.make(haystack, 20, 0.5, 12345)


def test_needle_batches_are_a_function_of_the_step_and_weigh_the_key(tokens):
    maker = NeedleMaker(Path(tokens) / "tokenizer.json")
    windows = NeedleWindows(Path(tokens) / "tokens", maker, 128, 4, 3, needle_fraction=1.0, answer_weight=5.0)
    first, again = windows.batch(2), NeedleWindows(Path(tokens) / "tokens", maker, 128, 4, 3, 1.0, 5.0).batch(2)
    assert torch.equal(first.tokens, again.tokens) and first.tokens.shape == (4, 129)
    assert first.weights is not None and first.weights.shape == (4, 128)
    assert ((first.weights == 5.0).sum(1) == len(maker.encode(" 12345"))).all()  # the key's targets, per row
    plain = NeedleWindows(Path(tokens) / "tokens", maker, 128, 4, 3, needle_fraction=0.0, answer_weight=5.0).batch(2)
    assert (plain.weights == 1.0).all()


def test_midtrain_must_lengthen_the_context():
    with pytest.raises(ConfigError, match="midtrain.seq_len"):
        load_config("nano", {"midtrain.seq_len": 128, "pretrain.seq_len": 256})


def test_a_student_midtrains_reports_the_grid_and_exports_matching_logits(tokens, herd_home):
    pre = output_of(herd("stage", "pretrain", "--variant", "maverick", "--run", "m", "--in", f"tokens={tokens}",
                         *PRETRAIN))
    out = Path(output_of(herd("stage", "midtrain", "--variant", "maverick", "--run", "m", "--in", f"model={pre}",
                              "--in", f"tokens={tokens}", *PRETRAIN, *MIDTRAIN)))
    step = json.loads((out / "step.json").read_text())
    assert step["variant"] == "maverick" and step["metrics"]["seq_len"] == 256
    rows = list(csv.DictReader((out / "reports" / "needle_recall.csv").open()))
    assert len(rows) == 2 * 3 * 2  # temperature tuning on/off x lengths x depths
    assert {(r["temperature_tuning"], r["length"]) for r in rows} >= {("True", "512"), ("False", "512")}
    assert all(0.0 <= float(r["recall"]) <= 1.0 for r in rows)

    from transformers import Llama4ForCausalLM

    from tasks.model.artifacts import load_model

    ours = load_model(out).eval()
    theirs = Llama4ForCausalLM.from_pretrained(out / "hf").eval()
    assert ours.config.max_seq_len == 256
    ids = torch.randint(0, 1024, (1, 300))  # longer than the trained context and than a chunk
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)
