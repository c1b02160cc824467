"""The online RL loop: rollouts in, pool re-scored, GRPO update, new weights out; a checkpoint every round.

    policy = load_model(Path(sft_folder))                      # trained in place
    renderer = ChatRenderer.load(tokenizer_dir)
    problems = read_jsonl(Path(problems_dir) / "train.jsonl")
    summary = run_rl(policy, None, problems, renderer, RLConfig(), on_metrics, workdir)
    write_model(policy, out, tokenizer_dir, bos_id, eos_id)

A round: submit requests until ``queue_depth`` rounds are in flight, take the oldest batch
of scored groups, drop it if more than ``max_lag`` versions old, let the pool re-score its
prompts with it (solved prompts dropped, stuck ones retired), train on the groups the pool
selects (zero-advantage groups never), publish the new weights, log, checkpoint.

``reference=None`` freezes a copy of the policy as given (before any resume) as the KL
reference; its KL is reported every round and enters the loss with ``kl_coef`` > 0.

At the end, ``pool.json`` lists the prompts left in the pool, hardest first
(:mod:`tasks.rl.hard_prompts`: the DPO stage's prompt set).

Resuming restores weights, AdamW moments and the schedule (the engine's checkpoint, :mod:`tasks.training.checkpoint`),
and the round, the rollouts spent and the pool from ``rl-state/round-N.json``, written
before the checkpoint so a checkpoint never lacks it. Rounds in flight at the interruption
are sampled again with the restored weights: with ``queue_depth=1`` a resumed run repeats
the uninterrupted one exactly; deeper queues differ by that one-version lag.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch

from herd.stages.rl import RLConfig
from tasks.model.llama4 import Llama4
from tasks.problems.item import SYSTEM_PROMPTS, Problem
from tasks.rl.grpo import GRPOTrainer, group_advantages
from tasks.rl.hard_prompts import write_pool
from tasks.rl.passk import PromptPool
from tasks.rl.queue import RolloutBatch, make_rollouts
from tasks.rollout.groups import ChatRenderer, SamplingParams
from tasks.rollout.passk import pass_at_k
from tasks.runtime import storage
from tasks.training.precision import device_and_dtype

log = logging.getLogger(__name__)

STATE = "rl-state"


def _state_name(round_: int) -> str:
    return f"round-{round_:08d}.json"


def save_state(workdir: Path, round_: int, state: dict, remote: str | None) -> None:
    folder = workdir / STATE
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(state, sort_keys=True)
    partial = folder / f".{_state_name(round_)}.partial"
    partial.write_text(text)
    os.replace(partial, folder / _state_name(round_))
    if remote:
        storage.write_text(storage.join(remote, STATE, _state_name(round_)), text)
    for old in sorted(folder.glob("round-*.json"))[:-2]:
        old.unlink(missing_ok=True)


def load_state(workdir: Path, round_: int, remote: str | None) -> dict:
    local = workdir / STATE / _state_name(round_)
    if local.exists():
        return json.loads(local.read_text())
    if remote:
        return json.loads(storage.read_text(storage.join(remote, STATE, _state_name(round_))))
    raise FileNotFoundError(f"checkpoint of round {round_} has no {local}")


def fitting(problems: Sequence[Problem], renderer: ChatRenderer, room: int) -> tuple[list[Problem], int]:
    """The problems whose prompt fits in ``room`` tokens with any system prompt RL may give it, and how many did not."""
    longest = max(SYSTEM_PROMPTS, key=len)
    fits = [p for p in problems if len(renderer.prompt_ids(p, p.system or longest)) <= room]
    return fits, len(problems) - len(fits)


def _round_metrics(batch: RolloutBatch, signal: torch.Tensor, config: RLConfig) -> dict[str, float]:
    groups = batch.groups
    if not groups:
        return {"groups": 0}
    passed = [g.passed(config.pass_threshold) for g in groups]
    n = config.group_size
    return {
        "groups": len(groups),
        "reward": float(torch.cat([g.rewards for g in groups]).mean()),
        "pass@1": sum(passed) / (n * len(groups)),
        f"pass@{config.k}": sum(pass_at_k(n, c, config.k) for c in passed) / len(groups),
        "zero_advantage_groups": int((~signal).sum()),
        "completion_tokens": float(torch.cat([g.mask.sum(1) for g in groups]).float().mean()),
        "skipped_long": batch.skipped_long,
        "sample_seconds": batch.seconds,
    }


def run_rl(policy: Llama4, reference: Llama4 | None, problems: Sequence[Problem], renderer: ChatRenderer,
           config: RLConfig, on_metrics: Callable[[int, dict], None], workdir: Path,
           remote: str | None = None) -> dict[str, float]:
    """Train ``policy`` in place for ``config.rounds`` rounds (or until ``rollout_budget``); returns a summary."""
    problems, too_long = fitting(problems, renderer, config.seq_len - config.max_new_tokens)
    if not problems:
        raise ValueError(f"run_rl needs problems to sample; all {too_long} prompts exceed seq_len - max_new_tokens")
    device, dtype = device_and_dtype(config)
    policy.to(device)
    reference = copy.deepcopy(policy) if reference is None else reference.to(device)
    reference.eval().requires_grad_(False)
    pool = PromptPool(problems, config)
    trainer = GRPOTrainer(policy, reference, config, pad_id=renderer.eot_id)
    totals = Counter()
    version = 0
    start = trainer.engine.resume(workdir, remote).step
    if start:
        state = load_state(workdir, start, remote)
        pool.load_state_dict(state["pool"])
        totals.update(state["totals"])
        version = state["version"]
        log.info("rl: resuming after round %d (version %d, %d rollouts)", start, version, totals["rollouts"])
    params = SamplingParams.of(config, config.group_size, dtype)
    rollouts = make_rollouts(config, policy, renderer, problems, params, workdir / "scratch")
    clock = time.monotonic()
    last: dict[str, float] = {}
    try:
        rollouts.publish(version, policy.state_dict())
        submitted, in_flight, requested = start, 0, totals["rollouts"]
        for round_ in range(start, config.rounds):
            while (submitted < config.rounds and in_flight < config.queue_depth
                   and not (config.rollout_budget and requested >= config.rollout_budget)):
                wanted = pool.request(submitted)
                rollouts.submit(submitted, wanted)
                submitted, in_flight = submitted + 1, in_flight + 1
                requested += len(wanted) * config.group_size
            if in_flight == 0:
                break
            asked = time.monotonic()
            batch = rollouts.get()
            in_flight -= 1
            metrics = _consume(batch, version, pool, trainer, config, totals)
            if metrics.pop("updated"):
                version += 1
                rollouts.publish(version, policy.state_dict())
            metrics.update(version=version, wait_seconds=time.monotonic() - asked, rollouts=totals["rollouts"],
                           seconds=time.monotonic() - clock)
            done = round_ + 1
            spent = config.rollout_budget and requested >= config.rollout_budget
            last_round = done == config.rounds or (spent and in_flight == 0)
            if done % config.checkpoint_every == 0 or last_round:
                save_state(workdir, done, {"pool": pool.state_dict(), "totals": dict(totals), "version": version},
                           remote)
                trainer.engine.save(workdir, done, remote)
            if done % config.log_every == 0 or last_round:
                on_metrics(done, metrics)
            last = metrics
            log.info("rl round %d: reward %.3f, pass@1 %.3f, pool %d, trained %d groups", done,
                     metrics.get("reward", 0.0), metrics.get("pass@1", 0.0), metrics["pool_size"],
                     metrics["groups_trained"])
    finally:
        rollouts.close()
        policy.to("cpu")
    write_pool(workdir, pool)
    counted = ("rounds", "updates", "rollouts", "zero_advantage_groups", "stale_groups")
    summary = {key: float(totals[key]) for key in counted}
    summary |= {key: float(value) for key, value in pool.totals.items()}
    summary |= {"pool_size": float(pool.size), "too_long": float(too_long),
                "rollouts_per_second": totals["rollouts"] / max(time.monotonic() - clock, 1e-9)}
    kept = ("reward", "pass@1", f"pass@{config.k}", "kl", "loss")
    return summary | {f"last_{key}": float(value) for key, value in last.items() if key in kept}


def _consume(batch: RolloutBatch, version: int, pool: PromptPool, trainer: GRPOTrainer, config: RLConfig,
             totals: Counter) -> dict[str, float]:
    """One round's bookkeeping and update; ``updated`` says whether the weights changed."""
    lag = version - batch.version
    totals["rounds"] += 1
    totals["rollouts"] += sum(g.tokens.shape[0] for g in batch.groups)
    metrics: dict[str, float] = {"lag": lag, "updated": False}
    if lag > config.max_lag:
        totals["stale_groups"] += len(batch.groups)
        return metrics | {"stale_groups": len(batch.groups), "pool_size": pool.size, "groups_trained": 0}
    if batch.groups:
        _, signal = group_advantages(torch.stack([g.rewards for g in batch.groups]))
    else:
        signal = torch.zeros(0, dtype=torch.bool)
    metrics |= _round_metrics(batch, signal, config)
    totals["zero_advantage_groups"] += int((~signal).sum())
    metrics |= pool.update([(g.problem_id, g.rewards.tolist(), not bool(s)) for g, s in zip(batch.groups, signal)],
                           batch.version)
    chosen = pool.select(batch.groups, signal.tolist(), batch.round)
    metrics |= {"pool_size": pool.size, "groups_trained": len(chosen)}
    metrics |= {f"trained/{capability}": count for capability, count in Counter(g.capability for g in chosen).items()}
    if chosen:
        metrics |= trainer.update(chosen)
        metrics["updated"] = True
        totals["updates"] += config.updates_per_round
    return metrics
