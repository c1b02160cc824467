"""The held-out hard set, and pruned against unpruned SFT at equal compute.

    hard = hard_set(eval_examples, eval_scores, buckets=4, hard_buckets=2)   # the judge's hardest half
    evaluate(model, tokenizer, hard, config)   # {"items", "loss", "pass1", "reward"}
    table = compare_pruned_vs_unpruned(student, tokenizer, train_examples, scores, hard, config,
                                       drop_fraction=0.5, workdir=Path("ablation"), seeds=(0, 1, 2))

Both arms start from the same weights and train for the same steps on rows of the same
shape, so they see the same number of tokens (padding included) and spend the same
compute; only which examples fill the rows differs. The judge's own cost is not counted.
``loss`` is the mean assistant-token loss per item; ``pass1`` the share of greedy answers
the checker passes (reward at least ``pass_reward``); ``reward`` the mean checker reward.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from herd.stages.sft import SFTConfig
from tasks.model.llama4 import Llama4
from tasks.runtime import storage
from tasks.sft.data import Example, PackedRows, pad_id
from tasks.sft.judge import answer_losses, prune, sample_rewards
from tasks.sft.report import bucket_of
from tasks.training.history import History
from tasks.training.loop import train
from tasks.training.optim import WidthMult
from tasks.training.precision import placed

log = logging.getLogger(__name__)

ARMS = ("pruned", "unpruned")


def hard_set(examples: Sequence[Example], scores: Sequence[float], buckets: int, hard_buckets: int) -> list[Example]:
    """The examples in the ``hard_buckets`` hardest of ``buckets`` quantile buckets of the judge's score."""
    bucket = bucket_of(examples, scores, buckets)
    return [e for e, b in zip(examples, bucket) if b >= buckets - hard_buckets]


def evaluate(model: Llama4, tokenizer, examples: Sequence[Example], config: SFTConfig) -> dict:
    if not examples:
        return {"items": 0, "loss": None, "pass1": None, "reward": None}
    with placed(model, config):
        losses = answer_losses(model, examples, config.judge_batch_size)
        rewards = [r[0] for r in sample_rewards(model, tokenizer, examples, 1, 0.0, config.max_new_tokens, config.seed)]
    return {
        "items": len(examples),
        "loss": round(sum(losses) / len(losses), 6),
        "pass1": round(sum(r >= config.pass_reward for r in rewards) / len(rewards), 6),
        "reward": round(sum(rewards) / len(rewards), 6),
    }


def train_arm(model: Llama4, examples: list[Example], tokenizer, config: SFTConfig, out: Path,
              on_metrics: Callable[[int, dict], None], remote: str | None = None, mult: WidthMult = 1.0,
              label: str = "sft") -> tuple[History, PackedRows]:
    """Train ``model`` in place on ``examples`` packed into rows; resumes from checkpoints under ``out``."""
    rows = PackedRows(examples, config.seq_len, config.batch_size, config.seed, pad_id(tokenizer))
    top = int(rows.tokens.max())
    if top >= model.config.vocab_size:
        raise ValueError(f"token id {top} is outside the model's vocabulary of {model.config.vocab_size}: "
                         "the model and the tokenizer come from different runs")
    steps = arm_steps(config, rows)
    if steps < config.steps:
        log.info("%s: %d steps, not %d: %d rows of kept examples, at most %g epochs", label, steps, config.steps,
                 rows.rows, config.max_epochs)
    # The schedule (warmup, decay) follows the steps actually trained.
    capped = config.model_copy(update={"steps": steps, "warmup_steps": min(config.warmup_steps, steps)})
    history = train(model.train(), capped, rows, out, on_metrics, remote, mult=mult, label=label)
    return history, rows


def arm_steps(config: SFTConfig, rows: PackedRows) -> int:
    """``config.steps``, or fewer when that would pass over the rows more than ``config.max_epochs`` times."""
    return max(1, min(config.steps, math.floor(config.max_epochs * rows.rows / config.batch_size)))


def equal_compute(config: SFTConfig, pruned: PackedRows) -> SFTConfig:
    """The config of the unpruned arm: the steps the pruned arm trained (its epoch cap included), no more."""
    return config.model_copy(update={"steps": arm_steps(config, pruned)})


def arm_row(arm: str, seed: int, rows: PackedRows | None, history: History | None, config: SFTConfig,
            result: dict) -> dict:
    """A row of the comparison table; ``rows`` and ``history`` None for the model before any SFT."""
    trained = rows is not None
    steps = arm_steps(config, rows) if trained else 0
    return {
        "arm": arm, "seed": seed, "examples": rows.examples if trained else 0, "rows": rows.rows if trained else 0,
        "steps": steps,
        "tokens": steps * config.batch_size * config.seq_len,
        "supervised_tokens_per_epoch": rows.supervised_tokens if trained else 0,
        "epochs": round(steps * config.batch_size / rows.rows, 3) if trained else 0,
        "final_train_loss": round(history.losses[-1], 6) if trained and history.losses else None,
        **{f"hard_{k}": v for k, v in result.items()},
    }


def compare_pruned_vs_unpruned(student: Llama4, tokenizer, train_examples: list[Example], scores: Sequence[float],
                               hard: Sequence[Example], config: SFTConfig, drop_fraction: float, workdir: Path,
                               seeds: Sequence[int] = (0,), on_metrics: Callable[[str, int, dict], None] | None = None,
                               mult: WidthMult = 1.0, remote: str | None = None) -> list[dict]:
    """One row per (seed, arm): two copies of ``student`` trained at equal compute, evaluated on ``hard``.

    ``student`` is left as it was. Each arm checkpoints under ``workdir/<arm>-seed<seed>``, so
    an interrupted comparison resumes where it stopped.
    """
    init = copy.deepcopy(student.state_dict())
    kept, _ = prune(train_examples, scores, drop_fraction, config.min_kept)
    table = []
    for seed in seeds:
        arm_config = config.model_copy(update={"seed": seed})
        for arm, examples in zip(ARMS, (kept, train_examples)):
            model = Llama4(student.config)
            model.load_state_dict(init)
            name = f"{arm}-seed{seed}"
            metrics = (lambda step, m, arm=arm: on_metrics(arm, step, m)) if on_metrics else (lambda step, m: None)
            history, rows = train_arm(model, examples, tokenizer, arm_config, workdir / name, metrics,
                                      storage.join(remote, name) if remote else None, mult, label=f"sft.{name}")
            table.append(arm_row(arm, seed, rows, history, arm_config, evaluate(model, tokenizer, hard, arm_config)))
            if arm == "pruned":
                arm_config = equal_compute(arm_config, rows)
    return table
