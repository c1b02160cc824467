"""Lightweight SFT: the judge, pruning, packed rows with assistant-token weights, the report, and a whole run."""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from conftest import tiny_model
from herd.stages.problems import ProblemsConfig
from herd.stages.sft import SFTConfig
from tasks.model.generate import generate
from tasks.problems.item import CAPABILITIES, read_jsonl
from tasks.sft.data import PAD, Example, PackedRows, pack, pad_id, render_examples
from tasks.sft.evaluate import arm_steps, equal_compute, hard_set, train_arm
from tasks.sft.judge import answer_losses, difficulty, drop_count, prune
from tasks.sft.report import logged_examples, pruning_plot, pruning_rows
from tasks.training.loop import next_token_objective, weighted_positions

PROBLEMS = ProblemsConfig(count_arithmetic=60, count_strings=60, count_code=10, count_translate=30,
                          count_language_id=40, count_continue=40, heldout_fraction=0.3)
# The SFT tests' model: the shared tiny shape at twice its width.
WIDE = dict(dim=64, head_dim=32, ffn_dim=128, dense_ffn_dim=256, chunk_size=64, floor_scale=256)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from tasks.problems.chat import load_tokenizer

    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def problems_dir(udhr_subset, tmp_path_factory) -> Path:
    from tasks.problems.build import build_problem_sets

    folder = tmp_path_factory.mktemp("sft-problems")
    build_problem_sets(udhr_subset, folder, PROBLEMS)
    return folder


@pytest.fixture(scope="module")
def examples(tokenizer, problems_dir) -> list[Example]:
    rendered, _ = render_examples(tokenizer, read_jsonl(problems_dir / "train.jsonl"), seed=0, max_tokens=193)
    return rendered


@dataclass(frozen=True)
class Item:
    id: str


# Pruning.

def test_pruning_drops_exactly_the_easiest_share_and_breaks_ties_by_id():
    items = [Item(f"item-{i:02d}") for i in range(20)]
    scores = [float(i // 4) for i in range(20)]  # five levels of four tied items
    kept, dropped = prune(items, scores, 0.5)
    assert len(dropped) == 10 and len(kept) == 10
    assert {x.id for x in dropped} == {f"item-{i:02d}" for i in range(10)}  # levels 0, 1 and half of 2, by id
    shuffled = list(zip(items, scores))
    random.Random(3).shuffle(shuffled)
    kept_again, dropped_again = prune([x for x, _ in shuffled], [s for _, s in shuffled], 0.5)
    assert {x.id for x in dropped_again} == {x.id for x in dropped}
    assert kept_again == [x for x, _ in shuffled if x in set(kept)]  # the items' own order is kept
    # Behemoth's 95%: 19 of 20, the hardest stays; a share that would take all keeps one.
    _, dropped = prune(items, scores, 0.95)
    assert len(dropped) == 19 and "item-19" not in {x.id for x in dropped}
    assert [drop_count(n, f) for n, f in ((10, 0.5), (11, 0.5), (20, 0.95), (10, 0.95), (7, 0.0), (0, 0.5))] \
        == [5, 6, 19, 9, 0, 0]
    with pytest.raises(ValueError):
        prune(items, scores[:-1], 0.5)
    # A floor on what is kept bounds Behemoth's 95% on a small set: the hardest min_kept stay.
    kept, dropped = prune(items, scores, 0.95, min_kept=6)
    assert len(kept) == 6 and {x.id for x in kept} == {f"item-{i:02d}" for i in range(14, 20)}
    assert [drop_count(n, f, m) for n, f, m in ((20, 0.95, 6), (20, 0.5, 6), (5, 0.95, 6), (1100, 0.95, 200))] \
        == [14, 10, 0, 900]


def test_training_stops_at_the_epoch_cap_and_the_unpruned_arm_at_the_pruned_arms_steps():
    def rows(n):
        return type("Rows", (), {"rows": n})()

    config = SFTConfig(steps=40, batch_size=8, max_epochs=4.0)
    assert arm_steps(config, rows(1000)) == 40  # 0.3 epochs: the cap does not bind
    assert arm_steps(config, rows(20)) == 10  # 4 passes over 20 rows of 8 a step
    assert arm_steps(config, rows(1)) == 1
    assert equal_compute(config, rows(20)).steps == 10
    with pytest.raises(ValidationError):
        SFTConfig(max_epochs=0)


def test_config_sets_the_share_per_variant_and_refuses_inconsistent_fields():
    config = SFTConfig()
    assert config.drop_fraction("scout") == config.drop_fraction("maverick") == 0.5
    assert config.drop_fraction("behemoth") == 0.95
    with pytest.raises(ValidationError):
        SFTConfig(passk_samples=2, passk_k=4)
    with pytest.raises(ValidationError):
        SFTConfig(buckets=2, hard_buckets=3)
    with pytest.raises(ValidationError):
        SFTConfig(drop_easy_fraction=1.0)
    with pytest.raises(ValidationError):
        SFTConfig(judge="vibes")


# Rows and weights on real token ids.

def test_only_assistant_tokens_weigh_prompts_and_padding_do_not(tokenizer, examples):
    pad = pad_id(tokenizer)
    assert pad == tokenizer.pad_token_id and tokenizer.convert_ids_to_tokens(pad) == PAD
    chosen = examples[:40]
    tokens, weights = pack(chosen, 192, pad)
    assert tokens.shape[1] == 193 and weights.shape == (tokens.shape[0], 192)
    targets = tokens[:, 1:]
    assert (weights[targets == pad] == 0).all() and (tokens[:, -1] == pad).any()
    # Row by row, the weighted targets read back as the answers and their <|eot|>, nothing of the prompts.
    weighted = "".join(tokenizer.decode(row[w == 1].tolist()) for row, w in zip(targets, weights))
    assert weighted == "".join(e.problem.answer.strip() + "<|eot|>" for e in chosen)
    assert weights.sum() == sum(sum(e.mask) for e in chosen)
    header = tokenizer.convert_tokens_to_ids("<|header_start|>")
    assert (weights[targets == header] == 0).all()
    assert (targets[weights == 1] != pad).all()


def test_the_loss_and_gradients_from_the_weighted_positions_alone_are_the_full_forwards(tokenizer, examples):
    rows = PackedRows(examples, 192, 4, seed=7, pad=pad_id(tokenizer))
    batch, everything = rows.batch(0), slice(None)
    where = weighted_positions(batch, everything, next_token_objective, torch.device("cpu"))
    assert where is not None and where.sum() == (batch.weights != 0).sum() < where.numel()
    # A batch that weighs every target, or an objective that reads other things than weights, runs the whole head.
    assert weighted_positions(batch._replace(weights=batch.weights + 1), everything, next_token_objective,
                              torch.device("cpu")) is None
    assert weighted_positions(batch, everything, lambda *_: None, torch.device("cpu")) is None

    def loss_and_grads(where):
        model = tiny_model(len(tokenizer), seed=2, **WIDE)
        out = model(batch.tokens[:, :-1], where=where)
        loss, _ = next_token_objective(out, batch.tokens[:, 1:], batch, everything, 0)
        loss.backward()
        return loss, [p.grad for p in model.parameters()]

    (full, full_grads), (selected, selected_grads) = loss_and_grads(None), loss_and_grads(where)
    torch.testing.assert_close(selected, full, atol=1e-6, rtol=1e-6)
    for a, b in zip(selected_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_the_batch_of_a_step_is_a_function_of_the_seed_and_step(tokenizer, examples):
    pad = pad_id(tokenizer)
    rows = PackedRows(examples, 192, 4, seed=7, pad=pad)
    again = PackedRows(list(reversed(examples)), 192, 4, seed=7, pad=pad)
    per_epoch = -(-rows.rows // 4)
    for step in (0, 1, per_epoch - 1, per_epoch, 3 * per_epoch + 1):  # across epoch boundaries
        first, second = rows.batch(step), again.batch(step)
        assert torch.equal(first.tokens, second.tokens) and torch.equal(first.weights, second.weights)
    assert not torch.equal(rows.batch(0).tokens, rows.batch(1).tokens)
    assert not torch.equal(rows.batch(0).tokens, PackedRows(examples, 192, 4, seed=8, pad=pad).batch(0).tokens)
    # One epoch visits every row once.
    one = PackedRows(examples, 192, 1, seed=7, pad=pad)
    seen = torch.cat([one.batch(s).tokens for s in range(one.rows)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, one.tokens.tolist()))


# The judge.

def test_greedy_answers_are_the_argmax_of_the_full_forward(tokenizer, examples):
    model = tiny_model(len(tokenizer), seed=2, **WIDE).eval()
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    chosen = [examples[0], examples[0], *[e for e in examples if len(e.prompt_ids) > 64][:2]]  # past a chunk
    prompts = [list(e.prompt_ids) for e in chosen]
    got = generate(model, prompts, 6, eot)
    with torch.no_grad():
        for prompt, ids in zip(prompts, got):
            sequence, expected = list(prompt), []
            while len(expected) < 6 and eot not in expected:
                expected.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
                sequence.append(expected[-1])
            assert ids == expected
    sampled = generate(model, prompts, 6, eot, temperature=1.0, seed=4)
    assert sampled == generate(model, prompts, 6, eot, temperature=1.0, seed=4) != got


def test_the_judges_loss_is_each_answers_mean_loss_under_a_forward_of_that_example_alone(tokenizer, examples):
    model = tiny_model(len(tokenizer), seed=3, **WIDE).eval()
    chosen = examples[:9]  # batches of 4 mixing lengths and where answers start
    assert len({e.mask.index(1) for e in chosen}) > 1
    losses = answer_losses(model, chosen, batch_size=4)
    with torch.no_grad():
        for example, loss in zip(chosen, losses):
            ids = torch.tensor([example.input_ids])
            per_token = torch.nn.functional.cross_entropy(model(ids[:, :-1]).logits[0], ids[0, 1:], reduction="none")
            weights = torch.tensor(example.mask[1:], dtype=torch.float)
            assert loss == pytest.approx(float((per_token * weights).sum() / weights.sum()), rel=1e-5)


def test_the_judge_finds_an_example_it_was_trained_on_easier(tokenizer, examples, tmp_path):
    short = [e for e in examples if e.capability in ("arithmetic", "strings") and len(e.input_ids) < 64]
    trained, unseen = short[0], short[1:9]
    model = tiny_model(len(tokenizer), seed=0, **WIDE)
    config = SFTConfig(seq_len=64, batch_size=1, steps=30, max_epochs=30, lr=1e-2, warmup_steps=0, checkpoint_every=1000,
                       log_every=1000, judge="teacher_passk", passk_samples=2, passk_k=1, sample_temperature=0.01,
                       max_new_tokens=12)
    train_arm(model, [trained], tokenizer, config, tmp_path, lambda step, metrics: None)
    model.eval()
    candidates = [trained, *unseen]
    losses = answer_losses(model, candidates, batch_size=4)
    assert losses[0] < min(losses[1:])
    kept, dropped = prune(candidates, losses, 0.5)
    assert trained in dropped and len(kept) == 4
    # pass@k by sampling and the checker: the memorised answer passes, unseen answers do not.
    passk = difficulty(config, model, tokenizer, candidates)
    assert passk[0] == 0.0 and min(passk[1:]) == 1.0


def test_stages_judging_the_same_examples_with_the_same_judge_share_its_scores(tokenizer, tokenizer_dir, problems_dir,
                                                                             tmp_path):
    from tasks.sft.judge_cache import cache_dir
    from tasks.sft.run import judged_data

    vocab = len(tokenizer)
    config = SFTConfig(seq_len=192, eval_max_items=12)

    def judged(judge_seed: int, workdir: str, settings: SFTConfig = config) -> list[float]:
        data = judged_data(tiny_model(vocab, seed=0, **WIDE), tiny_model(vocab, seed=judge_seed, **WIDE).eval(),
                           problems_dir, tokenizer_dir, settings, tmp_path / workdir)
        return data.scores + data.held_out_scores

    first = judged(1, "scout")
    [saved] = cache_dir().glob("*.json")
    assert json.loads(saved.read_text())["scores"] == first
    # Marked scores show where the next stage's come from: the same judge's are read, not recomputed.
    marked = [score + 100.0 for score in first]
    saved.write_text(json.dumps({"scores": marked}))
    assert judged(1, "maverick") == marked
    # Another judge, or another setting, judges again.
    assert max(abs(a - b) for a, b in zip(judged(2, "behemoth"), first)) > 1e-3
    assert judged(1, "batched", config.model_copy(update={"judge_batch_size": 4})) == pytest.approx(first, rel=1e-5)
    assert len(list(cache_dir().glob("*.json"))) == 3


# The report.

def test_report_counts_add_up_per_bucket_and_capability(examples):
    scores = [random.Random(e.id).random() for e in examples]
    scores[:10] = [0.5] * 10  # ties
    kept, dropped = prune(examples, scores, 0.5)
    kept_ids = {e.id for e in kept}
    rows = pruning_rows(examples, scores, kept_ids, buckets=4)
    assert sum(r["kept"] for r in rows) == len(kept) and sum(r["dropped"] for r in rows) == len(dropped)
    for row in rows:
        assert row["kept"] + row["dropped"] == row["total"]
    sizes = [sum(r["total"] for r in rows if r["bucket"] == b) for b in range(4)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(examples)  # quantile buckets
    for capability in {e.capability for e in examples}:
        assert sum(r["total"] for r in rows if r["capability"] == capability) == \
            sum(e.capability == capability for e in examples)
    # Half dropped out of four buckets: the two easiest go, the two hardest stay.
    assert all(r["dropped"] == r["total"] for r in rows if r["bucket"] < 2)
    assert all(r["kept"] == r["total"] for r in rows if r["bucket"] >= 2)
    picks = logged_examples(examples, scores, kept_ids, buckets=4, per_bucket=2)
    assert len(picks["bucket_0"]["dropped"]) == 2 and picks["bucket_0"]["kept"] == []
    assert all(p["id"] in kept_ids for p in picks["bucket_3"]["kept"])
    json.dumps(picks)
    hard = hard_set(examples, scores, buckets=4, hard_buckets=1)
    assert len(hard) == sizes[3] and min(scores[examples.index(e)] for e in hard) >= max(
        s for e, s in zip(examples, scores) if e not in hard)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    pruning_plot(rows)(figure)
    bars = sum(len(axes.patches) for axes in figure.axes)
    plt.close(figure)
    capabilities = {r["capability"] for r in rows}
    assert bars == 2 * 4 * len(capabilities)


# A whole run.

def test_run_sft_prunes_trains_on_assistant_tokens_and_reports(tokenizer, tokenizer_dir, problems_dir, tmp_path):
    from tasks.sft.run import SCORES, run_sft

    vocab = len(tokenizer)
    config = SFTConfig(seq_len=192, batch_size=4, steps=8, lr=3e-3, warmup_steps=1, log_every=4,
                       checkpoint_every=4, eval_max_items=12, max_new_tokens=4, compare_unpruned=True, min_kept=1)
    metrics, plots = [], []
    student = tiny_model(vocab, seed=0, **WIDE)
    summary, history = run_sft(student, tiny_model(vocab, seed=1, **WIDE), problems_dir, tokenizer_dir, config, 0.5,
                               tmp_path, lambda step, m: metrics.append((step, m)),
                               lambda name, draw: plots.append(name))
    assert summary["kept"] + summary["dropped"] == summary["train_examples"]
    assert summary["dropped"] == math.ceil(summary["train_examples"] / 2)
    assert summary["pruned_hard_loss"] < summary["before_hard_loss"]
    assert history.losses[-1] < history.losses[0]
    assert {s for s, m in metrics if "loss" in m} == {4, 8} and {s for s, m in metrics if "unpruned/loss" in m} == {4, 8}
    assert plots == ["sft_pruning.png"]

    table = list(csv.DictReader((tmp_path / "reports" / "sft_hard_eval.csv").open()))
    assert [r["arm"] for r in table] == ["before", "pruned", "unpruned"]
    pruned, unpruned = table[1], table[2]
    assert pruned["tokens"] == unpruned["tokens"] == str(8 * 4 * 192)  # equal compute
    assert int(pruned["examples"]) == summary["kept"] and int(unpruned["examples"]) == summary["train_examples"]
    counts = list(csv.DictReader((tmp_path / "reports" / "sft_pruning.csv").open()))
    assert sum(int(r["kept"]) for r in counts) == summary["kept"]
    assert {r["capability"] for r in counts} <= set(CAPABILITIES)
    assert json.loads((tmp_path / "reports" / "sft_examples.json").read_text())["bucket_0"]["dropped"]

    # Run again in the same folder: the saved scores and the final checkpoints stand, nothing retrains (no step
    # logs a metric), and the history of the first run comes back with its checkpoint for the reports.
    saved = (tmp_path / SCORES).read_text()
    logged = []
    again, again_history = run_sft(tiny_model(vocab, seed=0, **WIDE),
                                   None if config.judge == "student_loss" else tiny_model(vocab, 5, **WIDE),
                                   problems_dir, tokenizer_dir, config, 0.5, tmp_path,
                                   lambda step, m: logged.append(step), lambda name, draw: None)
    assert logged == [] and again_history == history and (tmp_path / SCORES).read_text() == saved
    assert again["kept"] == summary["kept"] and again["pruned_hard_loss"] == summary["pruned_hard_loss"]
