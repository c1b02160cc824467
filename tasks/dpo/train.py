"""DPO against a frozen reference: the loss, sequence log-probs, and the short training loop.

    summary = run_dpo(policy, None, hard_problems, ChatRenderer.load(tokenizer_dir), DPOConfig(), on_metrics, workdir)

Loss (Rafailov et al. 2023; LLAMA4_SPEC §5), over a batch of pairs:
``-log sigmoid(beta * ((log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x))))``,
each log-prob summed over the completion's tokens (its ``<|eot|>`` included). The implicit
reward of a completion is ``beta * (log pi - log ref)``; preference accuracy is the share
of pairs whose chosen completion has the larger implicit reward, the margin their mean
difference. With the policy equal to the reference the loss is log 2 and the margin 0.

Pairs are sampled once and kept in ``pairs.json``; reference log-probs are computed once.
Checkpoints every ``checkpoint_every`` steps (``tasks.training.checkpoint``) resume the run.
This is our own loop, not TRL's DPOTrainer: the model is ours, not a transformers model,
and the loop is a few dozen lines.
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from herd.stages.dpo import DPOConfig
from tasks.dpo.pairs import Pair, build_pairs, read_pairs, write_pairs
from tasks.model.llama4 import Llama4, Output
from tasks.problems.item import Problem
from tasks.rl.rollout import ChatRenderer
from tasks.training import checkpoint
from tasks.training.optim import lr_factor, param_groups
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


def sequence_logprobs(model: Llama4, prompts: Sequence[list[int]], completions: Sequence[list[int]],
                      pad_id: int) -> tuple[torch.Tensor, Output]:
    """Sum over each completion's tokens of log p(token | prompt, earlier tokens); rows right-padded."""
    device = next(model.parameters()).device
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    tokens_BL = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask_BL1 = torch.zeros(len(prompts), width - 1, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        tokens_BL[row, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        mask_BL1[row, len(prompt) - 1 : len(prompt) - 1 + len(completion)] = True
    tokens_BL, mask_BL1 = tokens_BL.to(device), mask_BL1.to(device)
    out = model(tokens_BL[:, :-1])
    logp_BL1 = torch.log_softmax(out.logits.float(), -1).gather(2, tokens_BL[:, 1:, None])[..., 0]
    return (logp_BL1 * mask_BL1).sum(1), out


def pair_logprobs(model: Llama4, pairs: Sequence[Pair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, Output]:
    """(chosen, rejected) sequence log-probs, both halves in one forward pass."""
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    logp, out = sequence_logprobs(model, prompts, completions, pad_id)
    return logp[: len(pairs)], logp[len(pairs):], out


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
    optimizer = torch.optim.AdamW(param_groups(policy, config), lr=config.lr, betas=(config.beta1, config.beta2),
                                  foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    found = checkpoint.latest(workdir, remote)
    start = checkpoint.restore(found, policy, optimizer, scheduler) if found is not None else 0
    with autocast:
        before = evaluate_pairs(policy, ref_chosen, ref_rejected, pairs, config, pad_id)
    policy.train()
    for step in range(start, config.steps):
        chosen_ids = random.Random(f"dpo:{config.seed}:{step}").sample(range(len(pairs)),
                                                                         min(config.batch_size, len(pairs)))
        with autocast:
            chosen, rejected, out = pair_logprobs(policy, [pairs[i] for i in chosen_ids], pad_id)
        loss, metrics = dpo_loss(chosen, rejected, ref_chosen[chosen_ids].to(device),
                                 ref_rejected[chosen_ids].to(device), config.beta)
        total = loss + config.aux_loss_coef * out.aux_loss if config.router_balance == "aux_loss" else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        if config.router_balance == "bias":
            moes = [block.moe for block in policy.layers if block.moe is not None]
            for moe, stats in zip(moes, out.router):
                moe.update_selection_bias(stats.tokens_per_expert, config.bias_update_rate)
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            on_metrics(done, {"loss": float(loss.detach()), **metrics, "grad_norm": grad_norm, "lr": lr})
        if done % config.checkpoint_every == 0 or done == config.steps:
            checkpoint.save(workdir, done, policy, optimizer, scheduler, remote)
    with autocast:
        after = evaluate_pairs(policy, ref_chosen, ref_rejected, pairs, config, pad_id)
    policy.to("cpu")
    return summary | {"steps": float(config.steps), **{f"initial_{k}": v for k, v in before.items()},
                      **{f"final_{k}": v for k, v in after.items()}}
