"""Online RL: pass@k, advantages, the clipped loss, the curriculum pool, cached sampling, and the loop end to end
(real tokenizer from the tokenizer stage, real problems and checkers, a tiny Llama 4) in one process and in two."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_model
from herd.stages.problems import ProblemsConfig
from herd.stages.rl import RLConfig
from tasks.model.generate import KVCache, nucleus, sample
from tasks.problems.item import Problem, make_problem
from tasks.rl.grpo import clipped_surrogate, group_advantages
from tasks.rl.passk import PromptPool
from tasks.rollout.passk import pass_at_k


pytestmark = pytest.mark.usefixtures("one_thread")


def real_problems(udhr_subset: Path) -> list[Problem]:
    from tasks.problems import udhr
    from tasks.problems.build import generate_all

    config = ProblemsConfig(count_arithmetic=4, count_strings=4, count_code=2, count_translate=16, count_language_id=4,
                            count_continue=6, max_text_chars=120)
    return generate_all(udhr.load_declarations(udhr_subset), config)


@pytest.fixture(scope="module")
def renderer(tokenizer_dir):
    from tasks.rollout.groups import ChatRenderer

    return ChatRenderer.load(tokenizer_dir)


@pytest.fixture(scope="module")
def problems(udhr_subset) -> list[Problem]:
    return real_problems(udhr_subset)


# pass@k

def test_pass_at_k_equals_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                exact = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_pass_at_k_stays_exact_where_binomials_overflow_floats():
    n, c, k = 2000, 3, 1000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(10, 8, 3) == 1.0  # fewer failures than k: every k-subset holds a pass
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


# GRPO

def test_advantages_are_standardised_per_group_and_flat_groups_carry_no_signal():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.9, 0.4, 0.4], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    advantages, signal = group_advantages(rewards)
    assert signal.tolist() == [True, True, False, False]
    torch.testing.assert_close(advantages[:2].mean(1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(advantages[:2].std(1), torch.ones(2), atol=1e-3, rtol=0)
    assert (advantages[2:] == 0).all()


def test_clipped_surrogate_equals_the_hand_computed_loss_and_its_gradient():
    ratios = torch.tensor([[1.5, 0.9], [0.5, 1.1]])
    old = torch.full((2, 2), -2.0)
    logp = (old + ratios.log()).requires_grad_(True)
    mask = torch.tensor([[True, True], [True, False]])
    loss, sums = clipped_surrogate(logp, old, torch.tensor([1.0, -2.0]), mask, 0.2, 0.2)
    # row 0 (A=+1): min(1.5, 1.2) = 1.2 and min(0.9, 0.9) = 0.9; row 1 (A=-2): min(-1.0, 0.8 * -2) = -1.6; one masked
    assert loss.item() == pytest.approx((-1.2 - 0.9 + 1.6) / 3, abs=1e-6)
    assert sums["clipped"] == 2 and sums["tokens"] == 3
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[1, 0] == 0 and logp.grad[1, 1] == 0  # clipped or masked: no gradient
    assert float(logp.grad[0, 1]) == pytest.approx(-0.9 / 3, abs=1e-6)  # d(-ratio * A)/d logp = -ratio * A


def test_the_kl_term_is_the_k3_estimator_against_the_reference():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.0 + math.log(2.0)]])
    loss, sums = clipped_surrogate(logp, logp, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), 0.2, 0.2,
                                   ref_logp_RL=ref, kl_coef=0.5)
    assert sums["kl"] == pytest.approx(2 - math.log(2) - 1, abs=1e-6)
    assert float(loss) == pytest.approx(0.5 * (2 - math.log(2) - 1), abs=1e-6)


# The curriculum pool, with a scorer whose success rates are fixed

def _fake_problems() -> tuple[list[Problem], dict[str, float]]:
    problems, rates = [], {}
    for capability, rate, count in [("arithmetic", 1.0, 3), ("arithmetic", 0.5, 2), ("strings", 0.5, 2),
                                    ("translate", 0.5, 2), ("strings", 0.0, 2), ("code", 0.3, 3)]:
        for i in range(count):
            problem = make_problem(capability, 1, f"{capability} {rate} {i}?", "x", "exact", {"answer": "x"})
            problems.append(problem)
            rates[problem.id] = rate
    return problems, rates


def _fake_round(pool: PromptPool, rates: dict[str, float], round_: int, n: int):
    """A policy that passes each prompt a fixed share of the time: round(rate * n) of its n samples."""
    wanted = pool.request(round_)
    groups = []
    for problem_id, _ in wanted:
        passed = round(rates[problem_id] * n)
        groups.append((problem_id, [1.0] * passed + [0.0] * (n - passed)))
    _, signal = group_advantages(torch.tensor([r for _, r in groups]))
    drops = pool.update([(pid, r, not bool(s)) for (pid, r), s in zip(groups, signal)], version=round_)
    scored = [SimpleNamespace(problem_id=pid, capability=pool.problems[pid].capability) for pid, _ in groups]
    candidates = [g for g, s in zip(scored, signal) if s and rates[g.problem_id] < 1]
    return wanted, drops, pool.select(scored, signal.tolist(), round_), candidates


def test_the_pool_drops_solved_prompts_keeps_medium_and_hard_ones_and_retires_stuck_ones():
    problems, rates = _fake_problems()
    config = RLConfig(pool_size=10, group_size=8, k=2, easy_threshold=0.9, retire_after=2, prompts_per_round=4)
    pool = PromptPool(problems, config)
    solved = {pid for pid, rate in rates.items() if rate == 1.0}
    stuck = {pid for pid, rate in rates.items() if rate == 0.0}
    seen_dropped = set()
    for round_ in range(4):
        wanted, drops, chosen, candidates = _fake_round(pool, rates, round_, config.group_size)
        assert [pid for pid, _ in wanted] and len(pool.active) <= config.pool_size
        assert not {g.problem_id for g in chosen} & (solved | stuck)  # never trained on
        assert len(chosen) == min(config.prompts_per_round, len(candidates))
        available = {g.capability for g in candidates}
        assert len({g.capability for g in chosen}) == min(len(chosen), len(available))  # capabilities mixed
        seen_dropped |= set(pool.solved)
    assert seen_dropped == solved and pool.totals["dropped_easy"] == len(solved)
    assert not set(pool.active) & solved  # solved prompts never come back
    assert pool.totals["retired"] >= len(stuck)  # stuck prompts yield their slot after retire_after rounds
    medium = {pid for pid, rate in rates.items() if 0 < rate < 1}
    assert medium <= set(pool.active) | set(pool.reservoir)
    state = json.loads(json.dumps(pool.state_dict()))
    again = PromptPool(problems, config)
    again.load_state_dict(state)
    assert again.request(7) == pool.request(7)


def test_system_prompts_vary_by_round_and_uniform_mode_drops_nothing():
    problems, rates = _fake_problems()
    pool = PromptPool(problems, RLConfig(pool_size=16, group_size=4, k=2))
    systems = {round_: dict(pool.request(round_)) for round_ in range(6)}
    assert len({tuple(sorted(s.items(), key=lambda kv: kv[0])) for s in systems.values()}) > 1
    assert len({system for s in systems.values() for system in s.values()}) >= 3

    uniform = PromptPool(problems, RLConfig(curriculum="uniform", prompts_per_round=5, group_size=4, k=2))
    for round_ in range(5):
        wanted, drops, chosen, _ = _fake_round(uniform, rates, round_, 4)
        assert len(wanted) == 5 and len(chosen) == 5  # every group trains, zero advantage or not
        assert drops == {"dropped_easy": 0, "retired": 0}
    assert uniform.size == len(problems)


# Sampling

def test_cached_logits_and_sampled_logprobs_match_the_models_forward():
    torch.manual_seed(0)
    model = tiny_model(97, n_layers=4, moe_every=2, chunk_size=8, floor_scale=4).eval()  # chunks and NoPE scaling
    tokens = torch.randint(0, 97, (3, 30))
    with torch.no_grad():
        full = model(tokens).logits
        cache = KVCache(model, 3, 40)
        parts = [model(tokens[:, :11], cache).logits]
        parts += [model(tokens[:, t : t + 1], cache).logits for t in range(11, 30)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)

    out = sample(model, tokens[:2, :6], 24, stop_id=5, temperature=1.0, top_p=1.0,
                 generator=torch.Generator().manual_seed(1))
    assert out.prompt_length == 6 and out.tokens.shape[1] == 6 + out.mask.shape[1]
    with torch.no_grad():
        logp = torch.log_softmax(model(out.tokens[:, :-1]).logits, -1)[:, 5:].gather(2, out.tokens[:, 6:, None])[..., 0]
    torch.testing.assert_close(logp * out.mask, out.logprobs, atol=1e-4, rtol=0)
    for row, length in zip(out.tokens, out.lengths.tolist()):
        sampled = row[6 : 6 + length].tolist()
        assert 5 not in sampled[:-1]  # a row ends at its first stop token ...
        assert length == 24 or sampled[-1] == 5  # ... or at max_new_tokens
        assert (row[6 + length :] == 5).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.testing.assert_close(nucleus(probs, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(nucleus(probs, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(nucleus(probs, 1.0), probs)


# The loop, end to end

RL = {"group_size": 4, "k": 2, "pool_size": 6, "prompts_per_round": 3, "max_new_tokens": 10, "seq_len": 192,
      "lr": 3e-3, "warmup_steps": 0, "batch_size": 16}


class Interrupt(Exception):
    pass


def test_rl_trains_a_tiny_llama4_on_real_problems_and_resumes_exactly(renderer, problems, tmp_path):
    from tasks.rl.hard_prompts import hard_prompt_ids
    from tasks.rl.loop import run_rl

    config = RLConfig(rounds=2, queue_depth=1, **RL)
    policy = tiny_model(len(renderer.tokenizer))
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    logged: dict[int, dict] = {}
    summary = run_rl(policy, None, problems, renderer, config, lambda r, m: logged.setdefault(r, m), tmp_path / "a")

    assert sorted(logged) == [1, 2]
    for metrics in logged.values():
        assert {"reward", "pass@1", "pass@2", "pool_size", "dropped_easy", "zero_advantage_groups", "groups_trained",
                "lag", "rollouts"} <= set(metrics)
        assert 0 <= metrics["reward"] <= 1 and 0 <= metrics["pass@1"] <= metrics["pass@2"] <= 1
        assert metrics["groups"] == 6 and metrics["pool_size"] <= 6 and metrics["lag"] == 0
    trained = [m for m in logged.values() if m["groups_trained"]]
    assert trained, "no group had a signal"
    assert all({"loss", "kl", "clip_fraction", "grad_norm"} <= set(m) for m in trained)
    assert summary["rollouts"] == 2 * 6 * 4 and logged[2]["rollouts"] == 48
    changed = max(float((policy.state_dict()[k] - v).abs().max()) for k, v in start.items())
    assert changed > 0
    assert set(hard_prompt_ids(tmp_path / "a")) <= {p.id for p in problems}

    resumed = tiny_model(len(renderer.tokenizer))

    def stop_after_first(round_, metrics):
        if round_ == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_rl(resumed, None, problems, renderer, config, stop_after_first, tmp_path / "b")
    again: dict[int, dict] = {}
    run_rl(tiny_model(len(renderer.tokenizer)), None, problems, renderer, config,
           lambda r, m: again.setdefault(r, m), tmp_path / "b")
    assert sorted(again) == [2]  # round 1 came from the checkpoint
    final_b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000002" / "model.safetensors"))
    for name, value in policy.state_dict().items():
        torch.testing.assert_close(final_b[name], value, atol=0, rtol=0)
    assert again[2]["reward"] == logged[2]["reward"]


def test_a_separate_rollout_process_gives_the_same_training_as_one_process(renderer, problems, tmp_path):
    from tasks.rl.loop import run_rl

    results = {}
    for workers in (0, 1):
        config = RLConfig(rounds=2, queue_depth=2, rollout_workers=workers, **RL)
        policy = tiny_model(len(renderer.tokenizer))
        logged: dict[int, dict] = {}
        run_rl(policy, None, problems, renderer, config, logged.setdefault, tmp_path / f"w{workers}")
        results[workers] = (policy.state_dict(), logged)
    (one, one_log), (two, two_log) = results[0], results[1]
    assert one_log[1]["groups_trained"] and two_log[2]["lag"] == 1  # round 2 was sampled while round 1 trained
    assert [m["reward"] for m in one_log.values()] == [m["reward"] for m in two_log.values()]
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5)
    assert not list((tmp_path / "w1" / "scratch").glob("weights-*"))  # published weights cleaned up


def test_rollouts_older_than_max_lag_are_dropped_not_trained():
    from collections import Counter

    from tasks.rl.loop import _consume
    from tasks.rl.queue import RolloutBatch
    from tasks.rollout.groups import Group

    problems, _ = _fake_problems()
    config = RLConfig(max_lag=1)
    group = Group(problems[0].id, problems[0].capability, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 2),
                  torch.ones(2, 2, dtype=torch.bool), 3, torch.tensor([1.0, 0.0]), version=0)
    totals = Counter()
    metrics = _consume(RolloutBatch(0, 0, [group], 0, 0.0), 2, PromptPool(problems, config), None, config, totals)
    assert metrics["lag"] == 2 and metrics["stale_groups"] == 1 and not metrics["updated"]
    assert totals["stale_groups"] == 1


def test_the_ablation_compares_both_arms_at_equal_rollouts(renderer, problems, tokenizer_dir, tmp_path):
    from tasks.model.artifacts import write_model
    from tasks.problems.item import write_jsonl
    from tasks.rl.ablation import arm_configs, curriculum_vs_uniform

    budget, arms = arm_configs(RLConfig(rounds=3, pool_size=8, prompts_per_round=2, group_size=4, k=2))
    assert budget == 3 * 8 * 4 and arms["passk"].rounds == 3 and arms["uniform"].rounds == 12
    assert arms["uniform"].rollout_budget == arms["passk"].rollout_budget == budget

    index = json.loads((tokenizer_dir / "tokens" / "index.json").read_text())
    model_dir, problems_dir = tmp_path / "model", tmp_path / "problems"
    model_dir.mkdir(), problems_dir.mkdir()
    write_model(tiny_model(len(renderer.tokenizer)), model_dir, tokenizer_dir, index["bos_id"], index["eos_id"])
    write_jsonl(problems[:-4], problems_dir / "train.jsonl")
    write_jsonl(problems[-4:], problems_dir / "eval.jsonl")
    config = RLConfig(rounds=1, **{**RL, "pool_size": 3, "prompts_per_round": 1, "group_size": 2, "k": 1})
    result = curriculum_vs_uniform(model_dir, tokenizer_dir, problems_dir, config, tmp_path / "ablation", seeds=(0,),
                                   eval_problems=4)
    assert result["rounds"] == {"passk": 1, "uniform": 3}
    assert [r["rollouts"] for r in result["runs"]] == [6, 6]
    assert {"passk", "uniform", "delta", "start"} <= set(result)
    assert 0 <= result["passk"]["pass@1"]["mean"] <= 1 and result["eval_problems"] == 4
    assert json.loads((tmp_path / "ablation" / "curriculum_ablation.json").read_text())["budget"] == 6
