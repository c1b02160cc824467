"""DPO: the loss and its metrics, pairs from scored groups, training on a fixed pair set, and the stage loop end to end
on a tiny Llama 4 with the tokenizer stage's tokenizer and real problems."""

from __future__ import annotations

import json
import math

import pytest
import torch

from herd.stages.dpo import DPOConfig
from tasks.dpo.pairs import Pair, pairs_of
from tasks.dpo.train import dpo_loss, pair_logprobs
from tasks.training.optim import param_groups
from tasks.rollout.groups import Group
from conftest import tiny_model
from test_rl import real_problems


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def renderer(tokenizer_dir):
    from tasks.rollout.groups import ChatRenderer

    return ChatRenderer.load(tokenizer_dir)


def test_the_loss_is_log_2_when_the_policy_is_the_reference():
    logp_chosen, logp_rejected = torch.tensor([-3.0, -7.5, -1.2]), torch.tensor([-2.0, -9.0, -4.4])
    loss, metrics = dpo_loss(logp_chosen, logp_rejected, logp_chosen, logp_rejected, beta=0.1)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["margin"] == 0 and metrics["accuracy"] == 0  # no pair is preferred yet


def test_preference_accuracy_and_margin_count_pairs_whose_chosen_gained_more():
    ref = torch.zeros(4)
    chosen, rejected = torch.tensor([1.0, 0.0, 3.0, -1.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss, metrics = dpo_loss(chosen, rejected, ref, ref, beta=0.5)
    assert metrics["accuracy"] == 0.5  # pairs 0 and 2
    assert metrics["margin"] == pytest.approx(0.5 * (1 - 1 + 2 - 1) / 4)
    assert metrics["chosen_reward"] == pytest.approx(0.5 * 3 / 4) and metrics["rejected_reward"] == pytest.approx(0.25)
    expected = -sum(math.log(1 / (1 + math.exp(-0.5 * d))) for d in (1, -1, 2, -1)) / 4
    assert float(loss) == pytest.approx(expected, abs=1e-6)


def test_pairs_take_the_best_against_the_worst_and_skip_ties():
    tokens = torch.tensor([[7, 8, 9, 10, 11, 2], [7, 8, 9, 20, 2, 2], [7, 8, 9, 30, 31, 2], [7, 8, 9, 40, 2, 2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    group = Group("p", "strings", tokens, torch.zeros(4, 3), mask, 3, torch.tensor([0.2, 1.0, 0.2, 0.0]), 0)
    pairs, ties = pairs_of(group, 2)
    assert pairs == [Pair("p", [7, 8, 9], [20, 2], [40, 2], 1.0, 0.0)]  # rows 1 and 3, each up to its end
    assert ties == 1  # second best (row 0) against second worst (row 2): both 0.2
    assert pairs_of(Group("q", "strings", tokens, torch.zeros(4, 3), mask, 3, torch.ones(4), 0), 1) == ([], 1)


def test_dpo_raises_the_chosen_over_the_rejected_on_a_fixed_pair_set():
    torch.manual_seed(0)
    policy, reference = tiny_model(64), tiny_model(64)
    pairs = [Pair(f"p{i}", [1, 2 + i, 3], [10 + i, 11, 5], [20 + i, 21, 22, 5], 1.0, 0.0) for i in range(6)]
    with torch.no_grad():
        ref_chosen, ref_rejected, _ = pair_logprobs(reference, pairs, pad_id=0)
    config = DPOConfig(lr=3e-3, weight_decay=0.0)
    optimizer = torch.optim.AdamW(param_groups(policy, config), lr=config.lr)
    losses, accuracies = [], []
    for _ in range(8):
        chosen, rejected, _ = pair_logprobs(policy, pairs, pad_id=0)
        loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        accuracies.append(metrics["accuracy"])
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)  # same init: policy == reference
    assert losses[-1] < losses[0] - 0.05 and all(b < a for a, b in zip(losses, losses[1:]))
    assert accuracies[-1] == 1.0


def test_run_dpo_builds_on_policy_pairs_from_real_problems_and_trains(renderer, udhr_subset, tmp_path):
    from tasks.dpo.train import PAIRS, run_dpo

    problems = [p for p in real_problems(udhr_subset) if p.capability in ("translate", "continue")]
    config = DPOConfig(prompts=8, samples_per_prompt=4, steps=6, batch_size=4, lr=3e-3, warmup_steps=0,
                       max_new_tokens=10, seq_len=192, log_every=2)
    policy = tiny_model(len(renderer.tokenizer))
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    logged = {}
    summary = run_dpo(policy, None, problems, renderer, config, lambda s, m: logged.setdefault(s, m), tmp_path)
    assert summary["pairs"] >= 2 and summary["prompts"] == 8
    saved = json.loads((tmp_path / PAIRS).read_text())
    assert len(saved["pairs"]) == summary["pairs"]
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in saved["pairs"])
    assert summary["initial_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert summary["final_loss"] < summary["initial_loss"] and summary["final_margin"] > 0
    assert summary["final_accuracy"] > 0.5
    assert sorted(logged) == [2, 4, 6] and {"loss", "accuracy", "margin"} <= set(logged[6])
    assert any(not torch.equal(policy.state_dict()[k], v) for k, v in start.items())
    assert (tmp_path / "checkpoints" / "step-00000006").is_dir()
