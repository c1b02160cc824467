"""DPO against a frozen reference: the loss, sequence log-probs, and the pairs as batches of the training loop.

    summary = run_dpo(policy, None, hard_problems, ChatRenderer.load(tokenizer_dir), DPOConfig(), on_metrics, workdir)

Loss (Rafailov et al. 2023; LLAMA4_SPEC §5), over a batch of pairs:
``-log sigmoid(beta * ((log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x))))``,
each log-prob summed over the completion's tokens (its ``<|eot|>`` included). The implicit
reward of a completion is ``beta * (log pi - log ref)``; preference accuracy is the share
of pairs whose chosen completion has the larger implicit reward, the margin their mean
difference. With the policy equal to the reference the loss is log 2 and the margin 0.

Pairs are sampled once and kept in ``pairs.json``; reference log-probs are computed once.
Training is the shared loop (:func:`tasks.training.loop.train`) with the DPO loss as its
objective: its optimizer step, schedule, clipping, router balance, metrics and checkpoints
(every ``checkpoint_every`` steps, which a rerun resumes from). Not TRL's DPOTrainer: the
model is ours, not a transformers model.
"""

from __future__ import annotations

import copy
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from herd.stages.dpo import DPOConfig
from tasks.dpo.pairs import Pair, build_pairs, read_pairs, write_pairs
from tasks.model.llama4 import Llama4, Output
from tasks.problems.item import Problem
from tasks.rollout.groups import ChatRenderer
from tasks.training.batch import Batch
from tasks.training.loop import train
from tasks.training.precision import device_and_dtype

log = logging.getLogger(__name__)

PAIRS = "pairs.json"


def dpo_loss(policy_chosen_B: torch.Tensor, policy_rejected_B: torch.Tensor, ref_chosen_B: torch.Tensor,
             ref_rejected_B: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean DPO loss of a batch of pairs, and its preference accuracy and reward margin."""
    chosen_B = beta * (policy_chosen_B - ref_chosen_B)
    rejected_B = beta * (policy_rejected_B - ref_rejected_B)
    loss = -F.logsigmoid(chosen_B - rejected_B).mean()
    chosen_B, rejected_B = chosen_B.detach(), rejected_B.detach()
    return loss, {
        "accuracy": float((chosen_B > rejected_B).float().mean()),
        "margin": float((chosen_B - rejected_B).mean()),
        "chosen_reward": float(chosen_B.mean()),
        "rejected_reward": float(rejected_B.mean()),
    }


def completion_logprobs(logits_BL1V: torch.Tensor, targets_BL1: torch.Tensor, mask_BL1: torch.Tensor) -> torch.Tensor:
    """Sum over each row's masked targets of log p(target | earlier tokens)."""
    logp_BL1 = torch.log_softmax(logits_BL1V.float(), -1).gather(2, targets_BL1[..., None])[..., 0]
    return (logp_BL1 * mask_BL1).sum(1)


def pair_rows(pairs: Sequence[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + chosen rows, then prompt + rejected rows (2P, L), right-padded; which targets (2P, L-1) are completion
    tokens."""
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    tokens_BL = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask_BL1 = torch.zeros(len(prompts), width - 1, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        tokens_BL[row, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        mask_BL1[row, len(prompt) - 1 : len(prompt) - 1 + len(completion)] = True
    return tokens_BL, mask_BL1


def pair_logprobs(model: Llama4, pairs: Sequence[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, Output]:
    """(chosen, rejected) sequence log-probs, both halves in one forward pass."""
    device = next(model.parameters()).device
    tokens_BL, mask_BL1 = (t.to(device) for t in pair_rows(pairs, pad_id))
    out = model(tokens_BL[:, :-1])
    logp = completion_logprobs(out.logits, tokens_BL[:, 1:], mask_BL1)
    return logp[: len(pairs)], logp[len(pairs):], out


class PairBatches:
    """The training loop's batches: step ``n`` draws ``batch_size`` pairs, seeded by ``(seed, n)``, as
    :func:`pair_rows` with the completion mask and the reference's log-probs of those pairs in ``extra``."""

    def __init__(self, pairs: Sequence[Pair], ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                 config: DPOConfig, pad_id: int) -> None:
        self.pairs, self.ref_chosen, self.ref_rejected = pairs, ref_chosen, ref_rejected
        self.size, self.seed, self.pad_id = min(config.batch_size, len(pairs)), config.seed, pad_id

    def batch(self, step: int) -> Batch:
        ids = random.Random(f"dpo:{self.seed}:{step}").sample(range(len(self.pairs)), self.size)
        tokens_BL, mask_BL1 = pair_rows([self.pairs[i] for i in ids], self.pad_id)
        return Batch(tokens_BL, Counter(), extra={"mask": mask_BL1, "ref_chosen": self.ref_chosen[ids],
                                                  "ref_rejected": self.ref_rejected[ids]})


class DPOObjective:
    """``objective(out_model, targets, batch, rows, step) -> (loss, metrics)`` for :func:`tasks.training.loop.train`:
    the DPO loss of the batch's pairs (one process: ``rows`` is every row)."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def __call__(self, out_model: Output, targets: torch.Tensor, batch: Batch, rows: slice,
                 step: int) -> tuple[torch.Tensor, dict[str, float]]:
        extra, device = batch.extra or {}, targets.device
        logp = completion_logprobs(out_model.logits, targets, extra["mask"].to(device))
        half = len(logp) // 2
        return dpo_loss(logp[:half], logp[half:], extra["ref_chosen"].to(device), extra["ref_rejected"].to(device),
                        self.beta)


@torch.no_grad()
def _logprobs_of_all(model: Llama4, pairs: Sequence[Pair], pad_id: int,
                     batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch):
        c, r, _ = pair_logprobs(model, pairs[start : start + batch], pad_id)
        chosen.append(c.cpu())
        rejected.append(r.cpu())
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_pairs(policy: Llama4, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, pairs: Sequence[Pair],
                   config: DPOConfig, pad_id: int) -> dict[str, float]:
    was_training = policy.training
    policy.eval()
    chosen, rejected = _logprobs_of_all(policy, pairs, pad_id, config.batch_size)
    policy.train(was_training)
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta)
    return {"loss": float(loss), **metrics}


def run_dpo(policy: Llama4, reference: Llama4 | None, problems: Sequence[Problem], renderer: ChatRenderer,
            config: DPOConfig, on_metrics: Callable[[int, dict], None], workdir: Path,
            remote: str | None = None) -> dict[str, float]:
    """Build (or reload) the pairs, then train ``policy`` in place for ``config.steps`` steps; returns a summary."""
    if config.engine != "plain":
        raise ValueError(f"dpo trains in one process (engine=plain), not engine={config.engine}")
    device, dtype = device_and_dtype(config)
    policy.to(device)
    reference = copy.deepcopy(policy) if reference is None else reference.to(device)
    reference.eval().requires_grad_(False)
    pad_id = renderer.eot_id
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / PAIRS).exists():
        pairs, counts = read_pairs(workdir / PAIRS)
    else:
        pairs, counts = build_pairs(policy, renderer, problems, config, dtype)
        write_pairs(pairs, counts, workdir / PAIRS)
    summary: dict[str, float] = {key: float(value) for key, value in counts.items()}
    if not pairs:
        log.warning("dpo: no pairs (every prompt's samples tied); nothing to train")
        policy.to("cpu")
        return summary | {"steps": 0.0}
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with autocast:
        ref_chosen, ref_rejected = _logprobs_of_all(reference, pairs, pad_id, config.batch_size)
        before = evaluate_pairs(policy, ref_chosen, ref_rejected, pairs, config, pad_id)
    batches = PairBatches(pairs, ref_chosen, ref_rejected, config, pad_id)
    train(policy.train(), config, batches, workdir, on_metrics, remote, label="dpo",
          objective=DPOObjective(config.beta))
    policy.to(device)  # the loop leaves the model on the CPU
    with autocast:
        after = evaluate_pairs(policy, ref_chosen, ref_rejected, pairs, config, pad_id)
    policy.to("cpu")
    return summary | {"steps": float(config.steps), **{f"initial_{k}": v for k, v in before.items()},
                      **{f"final_{k}": v for k, v in after.items()}}
