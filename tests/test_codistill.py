"""Co-distillation: the KL term and its T^2 scaling, top-k against the full KL, the soft-weight schemes, the teacher
cache against the teacher itself, and students that learn with the objective and are compared with and without it."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from herd.model import ModelConfig
from herd.pipeline import load_config
from herd.stages.codistill import CodistillConfig
from tasks.codistill.cache import build_cache, build_student_cache
from tasks.codistill.compare import compare, heldout_loss, last_shard
from tasks.model.llama4 import Llama4
from tasks.training.data import TokenWindows
from tasks.training.distill.losses import (TeacherTargets, codistill_loss, scheduled_alpha, signals, soft_loss,
                                           soft_weights)
from tasks.training.distill.objective import make_objective
from tasks.training.distill.teachers import (CachedTeacherWindows, KeyedWindows, OnlineTeacherWindows, TeacherCache,
                                             teacher_log_probs)
from tasks.training.loop import new_model, train
from tasks.training.reports import log_training_reports

V = 50


def tiny(vocab: int, dim: int = 32) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, dim=dim, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, ffn_dim=2 * dim,
                       dense_ffn_dim=4 * dim, n_experts=2, chunk_size=16, floor_scale=32, max_seq_len=32)


def tiny_pretrain(**updates):
    base = {"pretrain.seq_len": 32, "pretrain.batch_size": 4, "pretrain.steps": 30, "pretrain.warmup_steps": 2,
            "pretrain.lr": 1e-2, "pretrain.checkpoint_every": 1000, "pretrain.log_every": 5}
    return load_config("nano", {**base, **{f"pretrain.{k}": v for k, v in updates.items()}}).pretrain


@pytest.fixture(scope="module")
def tokens(tokenizer_dir) -> Path:
    """The tokenizer stage's packed shards."""
    return tokenizer_dir / "tokens"


@pytest.fixture(scope="module")
def teacher(tokens, tmp_path_factory) -> Llama4:
    """A tiny teacher that has learnt something: 20 steps on every shard but the held-out last one."""
    vocab = json.loads((tokens / "index.json").read_text())["vocab_size"]
    config = tiny_pretrain(seed=7, steps=20)
    model = new_model(tiny(vocab, dim=64), config)
    windows = KeyedWindows(tokens, 32, 4, 7, exclude_shards=last_shard(tokens))
    train(model, config, windows, tmp_path_factory.mktemp("teacher"), lambda step, metrics: None)
    return model.eval()


def test_kl_vanishes_for_the_teachers_own_distribution_and_t_squared_keeps_gradients_in_scale():
    torch.manual_seed(0)
    student = torch.randn(2, 3, V) * 3
    for temperature in (1.0, 2.0, 4.0):
        assert soft_loss(student, TeacherTargets(logits_BSV=student.clone()), temperature).abs().max() < 1e-5
    teacher = TeacherTargets(logits_BSV=torch.randn(2, 3, V) * 3)
    by_hand = F.kl_div(F.log_softmax(student / 4, -1), F.log_softmax(teacher.logits_BSV / 4, -1),
                       log_target=True, reduction="none").sum(-1)
    assert torch.allclose(soft_loss(student, teacher, 4.0), 16 * by_hand, atol=1e-5)

    def grad_norm(temperature: float, scaled: bool) -> float:
        logits = student.clone().requires_grad_()
        loss = soft_loss(logits, teacher, temperature).sum()
        (loss if scaled else loss / temperature**2).backward()
        return logits.grad.norm().item()

    # Hinton et al.: the soft gradients shrink as 1/T^2; the T^2 factor keeps them comparable across temperatures.
    assert grad_norm(16.0, scaled=False) < grad_norm(8.0, scaled=False) / 3.5
    assert grad_norm(16.0, scaled=True) == pytest.approx(grad_norm(8.0, scaled=True), rel=0.05)


def test_top_k_equals_the_full_kl_when_k_is_the_vocabulary_and_renormalises_below_it():
    torch.manual_seed(1)
    student, teacher_logits = torch.randn(2, 4, V) * 2, torch.randn(2, 4, V) * 2
    full = TeacherTargets(logits_BSV=teacher_logits)
    log_probs = F.log_softmax(teacher_logits, -1)
    every = log_probs.topk(V, dim=-1)
    all_k = TeacherTargets(ids_BSK=every.indices.int(), logprobs_BSK=every.values)
    for temperature in (1.0, 3.0):
        assert torch.allclose(soft_loss(student, all_k, temperature), soft_loss(student, full, temperature), atol=1e-5)
    cached = TeacherTargets(ids_BSK=every.indices.int(), logprobs_BSK=every.values.half())  # as the cache stores them
    assert torch.allclose(soft_loss(student, cached, 2.0), soft_loss(student, full, 2.0), atol=2e-3)
    assert torch.allclose(signals(student, torch.zeros(2, 4, dtype=torch.long), all_k).student_gap,
                          signals(student, torch.zeros(2, 4, dtype=torch.long), full).student_gap, atol=1e-5)

    top = log_probs.topk(5, dim=-1)
    q = F.softmax(top.values / 2, -1)  # the teacher's top 5, tempered and renormalised
    s = F.softmax(student.gather(-1, top.indices) / 2, -1)  # the student on the same ids, renormalised
    expected = 4 * (q * (q.log() - s.log())).sum(-1)
    assert torch.allclose(soft_loss(student, TeacherTargets(ids_BSK=top.indices, logprobs_BSK=top.values), 2.0),
                          expected, atol=1e-5)


def test_every_scheme_weighs_in_the_unit_interval_and_the_schedule_moves_with_the_step():
    torch.manual_seed(2)
    student, teacher = torch.randn(3, 8, V) * 4, TeacherTargets(logits_BSV=torch.randn(3, 8, V) * 4)
    labels = torch.randint(0, V, (3, 8))
    evidence = signals(student, labels, teacher)
    for scheme in ("none", "fixed", "scheduled", "dynamic"):
        config = CodistillConfig(scheme=scheme, alpha_start=1.0, alpha_end=0.0, label_gain=50, student_gain=50)
        for step in (0, 50, 99):
            weights = soft_weights(config, step, 100, labels, evidence)
            assert weights.shape == labels.shape and weights.min() >= 0 and weights.max() <= 1

    config = CodistillConfig(scheme="scheduled", alpha_start=0.9, alpha_end=0.2)
    path = [scheduled_alpha(config, step, 100) for step in range(100)]
    assert path[0] == pytest.approx(0.9) and path[-1] == pytest.approx(0.2)
    assert all(a >= b for a, b in itertools.pairwise(path)) and path[25] > path[50] > path[75]
    assert soft_weights(config, 99, 100, labels).mean() < soft_weights(config, 0, 100, labels).mean()
    with pytest.raises(ValueError, match="alpha_start != alpha_end"):
        CodistillConfig(scheme="scheduled", alpha_start=0.5, alpha_end=0.5)


def test_dynamic_leans_on_the_teacher_where_it_is_confident_and_the_label_disagrees():
    confident = torch.full((V,), -4.0)
    confident[3] = 6.0  # p(3) ~ 0.995
    flat = torch.zeros(V)
    teacher_logits = torch.stack([confident, confident, flat, flat])[None]  # (1, 4, V)
    labels = torch.tensor([[3, 7, 3, 7]])
    student = torch.zeros(1, 4, V)  # the same (uniform) student everywhere
    config = CodistillConfig(scheme="dynamic", alpha_start=0.5, alpha_end=0.5)
    for teacher in (TeacherTargets(logits_BSV=teacher_logits),
                    TeacherTargets(ids_BSK=F.log_softmax(teacher_logits, -1).topk(8, -1).indices,
                                   logprobs_BSK=F.log_softmax(teacher_logits, -1).topk(8, -1).values.half())):
        w = soft_weights(config, 0, 10, labels, signals(student, labels, teacher))[0]
        agrees, disagrees, unsure_a, unsure_b = w.tolist()
        assert disagrees > 0.95 and agrees < 0.2  # confident teacher: the label decides which way
        assert abs(unsure_a - 0.5) < 0.05 and abs(unsure_b - 0.5) < 0.05  # an unsure teacher leaves the schedule

    # A student far from a confident teacher takes more of the teacher than one that already matches it.
    agreeing = torch.tensor([[3, 3]])
    both = TeacherTargets(logits_BSV=torch.stack([confident, confident])[None])
    moving = torch.stack([confident, -confident])[None]  # matches the teacher, then is far from it
    w_match, w_far = soft_weights(config, 0, 10, agreeing, signals(moving, agreeing, both))[0].tolist()
    assert w_far > w_match + 0.05

    # The mixed loss: all label where w = 0, all teacher where w = 1.
    parts = codistill_loss(student, labels, TeacherTargets(logits_BSV=teacher_logits), config, 0, 10)
    expected = ((1 - parts.weights_BS) * parts.ce_BS + parts.weights_BS * parts.kl_BS).mean()
    assert parts.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_cache_holds_the_teachers_top_k_and_serves_the_same_batches_as_the_online_teacher(tokens, teacher,
                                                                                             tmp_path):
    index = build_cache(teacher, tokens, 32, 8, tmp_path, steps=3, batch_size=4, seed=5, teacher_hash="t0",
                        forward_batch=3)
    assert index["coverage"] == {"steps": 3, "batch_size": 4, "seed": 5} and index["top_k"] == 8
    assert 0 < index["windows"] <= 12 and index["windows"] == sum(s["windows"] for s in index["shards"])
    assert all((tmp_path / "cache" / s["file"]).exists() for s in index["shards"])
    cache = TeacherCache(tmp_path)
    source = KeyedWindows(tokens, 32, 4, 5)
    for step in range(3):
        rows = source.batch(step).tokens
        expected = teacher_log_probs(teacher, rows).topk(8, dim=-1)
        for row, (shard, start) in enumerate(source.positions(step)):
            ids, logprobs = cache.targets(shard, start)
            assert ids.dtype == torch.int32 and logprobs.dtype == torch.float16 and ids.shape == (32, 8)
            assert torch.equal(ids, expected.indices[row].int())
            assert torch.equal(logprobs, expected.values[row].half())

    cached = CachedTeacherWindows(tokens, 32, 4, 5, cache)
    online = OnlineTeacherWindows(TokenWindows(tokens, 32, 4, 5), teacher, top_k=8)
    for step in range(3):
        a, b = cached.batch(step), online.batch(step)
        assert torch.equal(a.tokens, b.tokens)  # the student's data is the same with or without a teacher
        assert torch.equal(a.extra["teacher_ids"], b.extra["teacher_ids"])
        assert torch.allclose(a.extra["teacher_logprobs"].float(), b.extra["teacher_logprobs"], atol=1e-2)
    second_rank = CachedTeacherWindows(tokens, 32, 4, 5, cache, rank=1, world_size=2).batch(2)
    assert torch.equal(second_rank.extra["teacher_ids"], cached.batch(2).extra["teacher_ids"][1::2])
    cache.check(cached, 3)
    with pytest.raises(ValueError, match="lacks"):
        cache.check(cached, 30)  # a longer run reads windows the teacher never saw
    with pytest.raises(ValueError, match="seq_len"):
        CachedTeacherWindows(tokens, 64, 4, 5, cache)


def test_a_student_learns_with_the_objective_and_the_comparison_reports_both(tokens, teacher, tmp_path):
    vocab = teacher.config.vocab_size
    config = tiny_pretrain(steps=16)
    codistill = CodistillConfig(scheme="dynamic", top_k=16)
    assert build_student_cache(teacher, tokens, tmp_path / "t", codistill, config)["coverage"]["steps"] == 16
    heldout = last_shard(tokens)
    batches = CachedTeacherWindows(tokens, 32, 4, 0, TeacherCache(tmp_path / "t"))
    batches.cache.check(batches, config.steps)
    objective = make_objective(codistill, config.steps)
    student = new_model(tiny(vocab), config)
    before = heldout_loss(student, tokens, 32, heldout, limit=32)
    logged: list[dict] = []
    history = train(student, config, batches, tmp_path / "s", lambda step, metrics: logged.append(metrics),
                    objective=objective)
    assert heldout_loss(student, tokens, 32, heldout, limit=32) < before - 0.3
    assert {"codistill/ce", "codistill/kl", "codistill/soft_weight_mean", "codistill/soft_weight_p90",
            "codistill/teacher_confidence"} <= set(logged[-1])
    # ``loss`` is the next-token loss, as a plain run's; the mix the optimiser saw is ``objective``.
    assert logged[-1]["loss"] == pytest.approx(logged[-1]["codistill/ce"])
    assert abs(logged[-1]["objective"] - logged[-1]["loss"]) > 1e-3
    assert len(history.objective_losses) == len(history.losses) == 16 and history.losses[-1] == logged[-1]["loss"]
    rows = objective.weight_log.rows()
    assert [r["step"] for r in rows] == list(range(16)) and all(0 <= r["p10"] <= r["p90"] <= 1 for r in rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    objective.weight_log.draw(figure)
    assert figure.axes
    plt.close(figure)

    tracker = DrawingTracker()
    log_training_reports(SimpleNamespace(workdir=tmp_path / "s", tracker=tracker), history, "Pretraining loss")
    axes = tracker.figures["loss.png"].axes[0]
    labels = axes.get_legend_handles_labels()[1]
    assert labels[0] == "next-token loss" and labels[1].startswith("objective")
    assert list(axes.lines[0].get_ydata()) == history.losses
    assert list(axes.lines[1].get_ydata()) == history.objective_losses

    online = CodistillConfig(teacher_source="online")
    result = compare(tokens, teacher, tiny(vocab), tiny_pretrain(steps=6), online,
                     ("none", "dynamic"), [0], tmp_path / "compare", heldout_windows=32)
    table = {row["scheme"]: row for row in result.rows()}
    assert set(table) == {"none", "dynamic"} and "delta_vs_none" in table["dynamic"]
    assert all(row["mean"] < math.log(vocab) for row in table.values())
    assert result.weight_logs["dynamic"].steps == list(range(6))


class DrawingTracker:
    """Draws each plot as the MLflow tracker does and keeps the figure, so a test can read what it shows."""

    def __init__(self) -> None:
        self.figures = {}

    def log_plot(self, name, draw, folder="plots") -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.figures[name] = figure = plt.figure()
        draw(figure)

    def log_artifact(self, path, folder) -> None:
        pass


def test_the_config_refuses_unknown_schemes_and_bad_values():
    for bad in ({"scheme": "sometimes"}, {"temperature": 0}, {"alpha": 1.5}, {"top_k": 0}, {"teacher_source": "disk"}):
        with pytest.raises(ValueError):
            CodistillConfig(**bad)
