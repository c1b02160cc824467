"""The judge: how hard each SFT example is for a model (higher is harder), and the pruning of the easy share.

    scores = difficulty(config, judge_model, tokenizer, examples)      # one float per example
    kept, dropped = prune(examples, scores, drop_fraction=0.5)

Llama 4 used Llama models as judges to tag SFT data "easy" and removed more than half of it
(95% for Behemoth); how they judged is not published. Two stand-ins:

- ``*_loss``: the model's mean cross-entropy on the reference answer's tokens (the assistant
  mask), teacher-forced, batched. An answer the model already predicts well is easy.
- ``teacher_passk``: ``1 - pass@k`` of answers the model samples, each scored by the item's
  checker (a pass is a reward of at least ``pass_reward``), with the unbiased estimator of
  the Codex paper over ``passk_samples`` samples. Costs ``max_new_tokens`` forward passes
  per batch of prompts of one length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F

from herd.stages.sft import SFTConfig
from tasks.model.generate import generate
from tasks.model.llama4 import Llama4
from tasks.problems.checkers import score_all
from tasks.rollout.passk import pass_at_k
from tasks.sft.data import Example
from tasks.training.precision import placed

T = TypeVar("T")


def difficulty(config: SFTConfig, model: Llama4, tokenizer, examples: list[Example]) -> list[float]:
    """The judge's difficulty of each example, by ``config.judge`` (the caller passes the judging model)."""
    if config.judge == "teacher_passk":
        return passk_difficulty(model, tokenizer, examples, config)
    with placed(model, config):
        return answer_losses(model, examples, config.judge_batch_size)


@torch.no_grad()
def answer_losses(model: Llama4, examples: Sequence[Example], batch_size: int = 16) -> list[float]:
    """Per example, the mean next-token loss on its assistant tokens (teacher-forced)."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # little padding per batch
    losses = [0.0] * len(examples)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(examples[i].input_ids) for i in rows)
        # Padding after an example cannot change its positions under the causal mask, and weighs 0.
        tokens_BS = torch.zeros(len(rows), width, dtype=torch.long)
        mask_BS = torch.zeros(len(rows), width)
        for r, i in enumerate(rows):
            ids, mask = examples[i].input_ids, examples[i].mask
            tokens_BS[r, : len(ids)] = torch.tensor(ids)
            mask_BS[r, : len(mask)] = torch.tensor(mask, dtype=torch.float)
        tokens_BS = tokens_BS.to(device)
        # The head runs from the first position (of any row) whose next token is an answer's: those before weigh 0.
        start = min(*(_first_answer(examples[i]) for i in rows), width - 1) - 1
        logits = model(tokens_BS[:, :-1], last=width - 1 - start).logits.float()
        per_token = F.cross_entropy(logits.transpose(1, 2), tokens_BS[:, start + 1 :], reduction="none").cpu()
        weights = mask_BS[:, start + 1 :]
        for r, i in enumerate(rows):
            losses[i] = float((per_token[r] * weights[r]).sum() / weights[r].sum().clamp(min=1))
    return losses


def _first_answer(example: Example) -> int:
    """The position of the example's first answer token after the BOS (its length if it has none)."""
    return next((t for t, m in enumerate(example.mask) if m and t > 0), len(example.mask))


def sample_rewards(model: Llama4, tokenizer, examples: Sequence[Example], samples: int, temperature: float,
                   max_new_tokens: int, seed: int) -> list[list[float]]:
    """``samples`` checker rewards per example for answers the model samples after its prompt.

    The prompt is the example's own ids up to the answer (its system prompt included), which is
    what :func:`tasks.problems.chat.render_prompt` gives for the same turns.
    """
    eot = tokenizer.convert_tokens_to_ids("<|eot|>")
    prompts = [list(e.prompt_ids) for e in examples]
    completions = generate(model, [p for p in prompts for _ in range(samples)], max_new_tokens, eot,
                           temperature=temperature, seed=seed)
    texts = [tokenizer.decode(ids, skip_special_tokens=False) for ids in completions]
    rewards = score_all([e.problem for e in examples for _ in range(samples)], texts)
    return [rewards[i * samples : (i + 1) * samples] for i in range(len(examples))]


def passk_difficulty(model: Llama4, tokenizer, examples: Sequence[Example], config: SFTConfig) -> list[float]:
    with placed(model, config):
        rewards = sample_rewards(model, tokenizer, examples, config.passk_samples, config.sample_temperature,
                                 config.max_new_tokens, config.seed)
    return [1.0 - pass_at_k(len(r), sum(x >= config.pass_reward for x in r), config.passk_k) for r in rewards]


def easiest_first(items: Sequence[T], scores: Sequence[float]) -> list[int]:
    """Indices from the easiest to the hardest; equal scores in the order of the items' ids."""
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    return sorted(range(len(items)), key=lambda i: (scores[i], items[i].id))


def drop_count(total: int, drop_fraction: float, min_kept: int = 1) -> int:
    """At least ``drop_fraction`` of ``total`` (rounded up), yet never so many that fewer than ``min_kept`` remain."""
    if not 0 <= drop_fraction < 1:
        raise ValueError(f"drop_fraction must be in [0, 1), not {drop_fraction}")
    if min_kept < 1:
        raise ValueError(f"min_kept must be at least 1, not {min_kept}")
    return min(max(total - min_kept, 0), math.ceil(drop_fraction * total - 1e-9))


def prune(items: Sequence[T], scores: Sequence[float], drop_fraction: float,
          min_kept: int = 1) -> tuple[list[T], list[T]]:
    """``(kept, dropped)``: the easiest ``drop_count`` items dropped, both lists in the items' order."""
    ranked = easiest_first(items, scores)
    dropped = set(ranked[: drop_count(len(items), drop_fraction, min_kept)])
    return ([x for i, x in enumerate(items) if i not in dropped], [x for i, x in enumerate(items) if i in dropped])
