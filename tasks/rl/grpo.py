"""GRPO: group-normalised advantages, the clipped surrogate with an optional k3 KL, and the update on a round.

    advantages_Gn, signal_G = group_advantages(rewards_Gn)
    trainer = GRPOTrainer(policy, reference, config, pad_id)
    metrics = trainer.update(groups)        # config.updates_per_round engine steps on these groups

Loss (DeepSeekMath; LLAMA4_SPEC §4), token-level normalised as in DAPO and TRL's default:
``-(1/sum|o_i|) sum_i sum_t [min(rho A_i, clip(rho, 1-eps_low, 1+eps_high) A_i) - beta KL_t]``,
``rho = pi_theta / pi_behaviour`` per token, ``KL_t = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1``.
The behaviour log-probs are those recorded at sampling, so a rollout sampled by an older
policy version (the asynchronous queue) is corrected by the same ratio. The optimizer step,
schedule, clipping, router balance and checkpoints are the training engine's
(:mod:`tasks.training.engine`, :mod:`tasks.training.router`); only the loss is GRPO's.

Shape legend: G groups, n completions per group, R rows (completions), L row length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from herd.stages.rl import RLConfig
from tasks.model.llama4 import Llama4, Output
from tasks.rollout.groups import Group
from tasks.training.engine import PlainEngine
from tasks.training.optim import lr_factor, param_groups
from tasks.training.precision import device_and_dtype
from tasks.training.router import balanced_loss, expert_counts, update_selection_bias


def group_advantages(rewards_Gn: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r - mean) / (std + eps)`` within each group, and whether the group has any signal (rewards not all equal)."""
    mean_G1 = rewards_Gn.mean(1, keepdim=True)
    std_G1 = rewards_Gn.std(1, keepdim=True)
    return (rewards_Gn - mean_G1) / (std_G1 + eps), std_G1[:, 0] > 1e-6


def clipped_surrogate(logp_RL: torch.Tensor, old_logp_RL: torch.Tensor, advantages_R: torch.Tensor,
                      mask_RL: torch.Tensor, eps_low: float, eps_high: float, ref_logp_RL: torch.Tensor | None = None,
                      kl_coef: float = 0.0, num_tokens: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss over the masked tokens, divided by ``num_tokens`` (default: this batch's).

    Returns the loss and token sums (``tokens``, ``clipped``, ``kl``) for averaging over micro-batches.
    """
    mask = mask_RL.to(logp_RL.dtype)
    ratio_RL = torch.exp(logp_RL - old_logp_RL)
    advantages_R1 = advantages_R[:, None]
    unclipped = ratio_RL * advantages_R1
    clipped = torch.clamp(ratio_RL, 1 - eps_low, 1 + eps_high) * advantages_R1
    per_token = -torch.minimum(unclipped, clipped)
    kl_sum = 0.0
    if ref_logp_RL is not None:
        log_ratio = ref_logp_RL - logp_RL
        kl_RL = torch.exp(log_ratio) - log_ratio - 1
        if kl_coef:
            per_token = per_token + kl_coef * kl_RL
        kl_sum = float((kl_RL.detach() * mask).sum())
    denominator = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
    loss = (per_token * mask).sum() / denominator
    was_clipped = ((ratio_RL < 1 - eps_low) & (advantages_R1 < 0)) | ((ratio_RL > 1 + eps_high) & (advantages_R1 > 0))
    return loss, {"tokens": float(mask.sum()), "clipped": float((was_clipped & mask_RL).sum()), "kl": kl_sum}


@dataclass
class Rows:
    """Rollout rows right-padded to one length; position t of the targets predicts token t + 1."""

    tokens_RL: torch.Tensor
    mask_RL1: torch.Tensor  # (R, L-1): the target is a sampled completion token
    old_logp_RL1: torch.Tensor
    advantages_R: torch.Tensor

    def __len__(self) -> int:
        return self.tokens_RL.shape[0]

    def slice(self, rows: slice) -> "Rows":
        return Rows(self.tokens_RL[rows], self.mask_RL1[rows], self.old_logp_RL1[rows], self.advantages_R[rows])


def rows_of(groups: Sequence[Group], pad_id: int) -> Rows:
    """Every completion of ``groups`` as a training row, with its group-normalised advantage."""
    lengths = [g.prompt_length + int(n) for g in groups for n in g.mask.sum(1)]
    width = max(lengths)
    tokens = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), width - 1, dtype=torch.bool)
    old = torch.zeros(len(lengths), width - 1)
    advantages = []
    r = 0
    for group in groups:
        group_advantage_n = group_advantages(group.rewards[None])[0][0]
        P = group.prompt_length
        for j in range(group.tokens.shape[0]):
            n = int(group.mask[j].sum())
            tokens[r, : P + n] = group.tokens[j, : P + n]
            mask[r, P - 1 : P - 1 + n] = True
            old[r, P - 1 : P - 1 + n] = group.logprobs[j, :n]
            advantages.append(float(group_advantage_n[j]))
            r += 1
    return Rows(tokens, mask, old, torch.tensor(advantages))


def token_logprobs(model: Llama4, tokens_RL: torch.Tensor, temperature: float) -> tuple[torch.Tensor, Output]:
    """Log-prob (R, L-1) of each next token under softmax(logits / temperature), and the model's output."""
    out = model(tokens_RL[:, :-1])
    logp = torch.log_softmax(out.logits.float() / temperature, -1)
    return logp.gather(2, tokens_RL[:, 1:, None])[..., 0], out


class GRPOTrainer:
    """The policy's engine (AdamW, schedule, clipping, checkpoints), and the update on one round's groups."""

    def __init__(self, policy: Llama4, reference: Llama4 | None, config: RLConfig, pad_id: int) -> None:
        if config.engine != "plain":
            raise ValueError(f"rl trains in one process (engine=plain), not engine={config.engine}")
        self.policy, self.reference, self.config, self.pad_id = policy, reference, config, pad_id
        self.device, self.dtype = device_and_dtype(config)
        schedule = config.model_copy(update={"steps": config.optimizer_steps})
        self.engine = PlainEngine(policy, param_groups(policy, config), config, lambda step: lr_factor(step, schedule))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @torch.no_grad()
    def _reference_logprobs(self, rows: Rows) -> list[torch.Tensor] | None:
        if self.reference is None:
            return None
        with self._autocast():
            return [token_logprobs(self.reference, rows.slice(s).tokens_RL.to(self.device), self.config.temperature)[0]
                    for s in self._micro_batches(len(rows))]

    def _micro_batches(self, count: int) -> list[slice]:
        return [slice(i, i + self.config.batch_size) for i in range(0, count, self.config.batch_size)]

    def update(self, groups: Sequence[Group]) -> dict[str, float]:
        """``updates_per_round`` AdamW steps on ``groups``; metrics averaged over them."""
        config = self.config
        rows = rows_of(groups, self.pad_id)
        num_tokens = int(rows.mask_RL1.sum())
        reference = self._reference_logprobs(rows)
        self.policy.train()
        lr = self.engine.param_groups[0]["lr"]
        totals = {"loss": 0.0, "clipped": 0.0, "kl": 0.0, "tokens": 0.0, "grad_norm": 0.0}
        for _ in range(config.updates_per_round):
            self.engine.zero_grad()
            counts = None
            for b, part in enumerate(self._micro_batches(len(rows))):
                batch = rows.slice(part)
                with self._autocast():
                    logp, out = token_logprobs(self.policy, batch.tokens_RL.to(self.device), config.temperature)
                loss, sums = clipped_surrogate(
                    logp, batch.old_logp_RL1.to(self.device), batch.advantages_R.to(self.device),
                    batch.mask_RL1.to(self.device), config.clip_epsilon, config.epsilon_high,
                    None if reference is None else reference[b], config.kl_coef, num_tokens)
                loss = balanced_loss(loss, out.aux_loss, config, len(batch), len(rows))
                self.engine.backward(loss)
                totals["loss"] += float(loss.detach())
                for key in ("clipped", "kl", "tokens"):
                    totals[key] += sums[key]
                layer_counts = expert_counts(out)
                counts = layer_counts if counts is None else [a + c for a, c in zip(counts, layer_counts)]
            totals["grad_norm"] += self.engine.step()
            if config.router_balance == "bias" and counts:
                update_selection_bias(self.policy, counts, config.bias_update_rate)
        updates = config.updates_per_round
        metrics = {
            "loss": totals["loss"] / updates,
            "clip_fraction": totals["clipped"] / max(totals["tokens"], 1.0),
            "grad_norm": totals["grad_norm"] / updates,
            "trained_tokens": num_tokens,
            "lr": lr,
        }
        if reference is not None:
            metrics["kl"] = totals["kl"] / max(totals["tokens"], 1.0)
        return metrics
