"""Mid-training: needle sequences are built as specified, the stage continues a pretrained student at a longer
context, reports the retrieval grid, and exports a checkpoint transformers loads with the same logits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import herd, output_of, tiny_model
from herd.config import ConfigError
from herd.pipeline import load_config
from tasks.midtrain.needles import QUESTION, NeedleMaker, NeedleWindows, recall
from tasks.model.llama4 import Output

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


class KeyReader(torch.nn.Module):
    """A perfect retriever: it reads the pass key after the needle's "The pass key is" and predicts it after the
    question. ``misread``: it predicts the key's last token one id off, so it never recalls a whole key."""

    def __init__(self, maker: NeedleMaker, vocab_size: int, misread: bool = False) -> None:
        super().__init__()
        self.intro, self.question = maker.encode(" The pass key is"), maker.encode(QUESTION)
        self.vocab_size, self.misread = vocab_size, misread

    def forward(self, tokens_BS: torch.Tensor, cache=None, last: int | None = None) -> Output:
        B, S = tokens_BS.shape
        logits = torch.zeros(B, S, self.vocab_size)
        for b, row in enumerate(tokens_BS.tolist()):
            key_at = _find(row, self.intro) + len(self.intro)
            answer_at = _find(row, self.question) + len(self.question)  # the sequence's rest (one more than S) is the key
            key = row[key_at : key_at + S + 1 - answer_at]
            for j, token in enumerate(key):
                wrong = self.misread and j == len(key) - 1
                logits[b, answer_at - 1 + j, (token + wrong) % self.vocab_size] = 1.0
        return Output(logits if last is None else logits[:, S - last :], [])


def _find(row: list[int], part: list[int]) -> int:
    return next(i for i in range(len(row)) if row[i : i + len(part)] == part)


def test_recall_counts_the_needles_whose_whole_key_the_model_predicts(tokens):
    maker = NeedleMaker(Path(tokens) / "tokenizer.json")
    tokens_dir, vocab = Path(tokens) / "tokens", maker.tokenizer.get_vocab_size()
    for length, depth in ((96, 0.0), (128, 0.5), (200, 1.0)):
        assert recall(KeyReader(maker, vocab), maker, tokens_dir, length, depth, trials=3, seed=5) == 1.0
        assert recall(KeyReader(maker, vocab, misread=True), maker, tokens_dir, length, depth, trials=3, seed=5) == 0.0


def test_the_grid_sharing_the_blocks_before_the_nope_layer_gives_each_variants_own_recall(tokens):
    from herd.stages.midtrain import MidtrainConfig
    from tasks.midtrain.stage import _with_temperature_tuning, needle_grid

    from tasks.midtrain.needles import needle_trials

    maker = NeedleMaker(Path(tokens) / "tokenizer.json")
    # The tiny model's last layer is its NoPE layer, where temperature tuning acts beyond 32 positions.
    model = tiny_model(maker.tokenizer.get_vocab_size(), seed=3, floor_scale=32, attn_scale=4.0).eval()
    assert model.config.is_nope(len(model.layers) - 1) and not model.config.is_nope(0)
    untuned = _with_temperature_tuning(model, False)
    found = needle_trials(maker, Path(tokens) / "tokens", 160, 0.5, 3, seed=1)
    inputs = found.batch[:, :-1]
    with torch.no_grad():
        tuned_logits, untuned_logits = model(inputs, last=found.width).logits, untuned(inputs, last=found.width).logits
        shared = untuned(inputs, last=found.width, resume=(1, model.hidden(inputs, 1))).logits
    assert not torch.allclose(tuned_logits, untuned_logits, atol=1e-3)
    torch.testing.assert_close(shared, untuned_logits, atol=1e-5, rtol=1e-5)
    # The grid's rows: temperature tuning on, then off, each over lengths and depths, the recall of each variant alone.
    config = MidtrainConfig(eval_lengths=[96, 160], eval_depths=[0.0, 1.0], eval_trials=3)
    grid = needle_grid(model, maker, Path(tokens) / "tokens", config)
    expected = [{"temperature_tuning": tuned, "length": length, "depth": depth,
                 "recall": recall(_with_temperature_tuning(model, tuned), maker, Path(tokens) / "tokens", length, depth,
                                  3, seed=config.seed + 1)}
                for tuned in (True, False) for length in (96, 160) for depth in (0.0, 1.0)]
    assert grid == expected


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
