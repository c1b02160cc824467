"""Ablation: the pass@k curriculum against uniform prompt sampling, at equal rollouts, over seeds.

    result = curriculum_vs_uniform(Path(sft_model), Path(tokenizer_dir), Path(problems_dir),
                                   RLConfig(rounds=20), Path("ablation"), seeds=(0, 1, 2))
    result["delta"]["pass@1"]      # mean over seeds of passk minus uniform, on held-out problems

Both arms start from the same model and spend the same number of sampled completions
(``rollout_budget``; by default what ``rounds`` rounds of the curriculum spend, re-scoring
included). The curriculum samples its whole pool each round and trains on at most
``prompts_per_round`` of those groups; the uniform arm samples ``prompts_per_round``
prompts a round and trains on all of them, so it gets more rounds (and more updates) for
the same rollouts. Each arm is then evaluated on the first ``eval_problems`` items of
``eval.jsonl`` (n samples each, unbiased pass@1 and pass@k). Runs resume from their
checkpoints under ``workdir/<arm>-seed<seed>``; the result is also written to
``workdir/curriculum_ablation.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from herd.stages.rl import RLConfig
from tasks.model.artifacts import load_model
from tasks.problems.item import read_jsonl
from tasks.rl.loop import run_rl
from tasks.rollout.groups import ChatRenderer, SamplingParams, evaluate
from tasks.training.precision import device_and_dtype

ARMS = ("passk", "uniform")
RESULT = "curriculum_ablation.json"


def arm_configs(config: RLConfig) -> tuple[int, dict[str, RLConfig]]:
    """The shared rollout budget and each arm's config (rounds sized so both can spend it)."""
    budget = config.rollout_budget or config.rounds * config.pool_size * config.group_size
    per_round = {"passk": config.pool_size * config.group_size, "uniform": config.prompts_per_round * config.group_size}
    base = config.model_dump()
    return budget, {arm: RLConfig.model_validate({**base, "curriculum": arm, "rollout_budget": budget,
                                                  "rounds": math.ceil(budget / per_round[arm])})
                    for arm in ARMS}


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def curriculum_vs_uniform(model_folder: Path, tokenizer_dir: Path, problems_dir: Path, config: RLConfig,
                          workdir: Path, seeds: Sequence[int] = (0, 1, 2), eval_problems: int = 64,
                          eval_samples: int | None = None,
                          on_metrics: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Train both arms for every seed and evaluate them; ``on_metrics(arm, seed, round, metrics)`` sees every round."""
    renderer = ChatRenderer.load(tokenizer_dir)
    train = read_jsonl(Path(problems_dir) / "train.jsonl")
    held_out = read_jsonl(Path(problems_dir) / "eval.jsonl")[:eval_problems]
    budget, arms = arm_configs(config)
    device, dtype = device_and_dtype(config)
    params = SamplingParams.of(config, eval_samples or config.group_size, dtype)
    k = min(config.k, params.n)

    def evaluated(model, seed: int) -> dict[str, float]:
        model.to(device)
        try:
            return evaluate(model, renderer, held_out, params, k, config.pass_threshold, seed=10_000 + seed)
        finally:
            model.to("cpu")

    start = evaluated(load_model(Path(model_folder)), 0)
    runs = []
    for seed in seeds:
        for arm, arm_config in arms.items():
            arm_config = arm_config.model_copy(update={"seed": seed})
            policy = load_model(Path(model_folder))
            report = partial(on_metrics, arm, seed) if on_metrics else (lambda round_, metrics: None)
            summary = run_rl(policy, None, train, renderer, arm_config, report, Path(workdir) / f"{arm}-seed{seed}")
            scores = {f"eval_{key}": value for key, value in evaluated(policy, seed).items()}
            runs.append({"arm": arm, "seed": seed, "rollouts": summary["rollouts"], "rounds": summary["rounds"],
                         "updates": summary["updates"], **scores})
    metrics = ("reward", "pass@1", f"pass@{k}")
    by_arm = {arm: [r for r in runs if r["arm"] == arm] for arm in ARMS}
    result = {
        "budget": budget,
        "rounds": {arm: arms[arm].rounds for arm in ARMS},
        "seeds": list(seeds),
        "eval_problems": len(held_out),
        "eval_samples": params.n,
        "start": start,
        "runs": runs,
        **{arm: {m: _mean_std([r[f"eval_{m}"] for r in by_arm[arm]]) for m in metrics} for arm in ARMS},
        "delta": {m: _mean_std([p[f"eval_{m}"] - u[f"eval_{m}"] for p, u in zip(by_arm["passk"], by_arm["uniform"])])
                  for m in metrics},
    }
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / RESULT).write_text(json.dumps(result, indent=2))
    return result
