"""The co-distillation loss per target token, and the soft weight that mixes its two parts.

Shape legend: B batch, S sequence (targets), V vocabulary, K the teacher's top-k ids,
X the support a KL runs over (V online, K from the cache).

    loss_t = (1 - w_t) * CE(student_t, label_t) + w_t * T^2 * KL(teacher_T,t || student_T,t)

**Teacher targets.** Online, the teacher's logits cover the vocabulary and the KL is the
full one. From the cache (:mod:`tasks.training.distill.teachers`) there are the teacher's k most
likely ids and their log-probabilities at T = 1. Both distributions are then restricted
to those k ids and renormalised: ``q = softmax_K(logp_T / T)``, ``s = softmax_K(z_S[ids] / T)``.
Tempering the stored T = 1 log-probs and renormalising over K is exact (a softmax over a
subset does not see the normaliser), so one cache serves every temperature. The student
is renormalised too, rather than scored by its full-vocabulary log-probs at those ids,
because at T > 1 the tempered teacher has real mass outside its top k that the cache
cannot show; pinning the tempered student's mass inside K would be a bias of its own.
What the student puts outside K is left to the cross-entropy, which pulls mass onto the
label. With k = V this is the full KL (``tests/test_codistill.py``).

**Soft weight** ``w`` in [0, 1], by scheme: ``none`` 0 (plain next-token loss); ``fixed``
alpha; ``scheduled`` alpha(step), moving from ``alpha_start`` to ``alpha_end``; ``dynamic``

    logit(w_t) = logit(alpha(step)) + label_gain * c_t * (2 h_t - 1) + student_gain * c_t * g_t

from three per-token signals of the teacher at T = 1, all exact from the cache too:
``c`` the teacher's top probability (its confidence), ``h = 1 - p_teacher(label)`` (how
hard the label is for the teacher: 1 when the label is not among its candidates), and
``g`` the student-teacher Jensen-Shannon divergence over the support, divided by log 2.
The schedule sets the base odds; a confident teacher that agrees with the label sends
the token to the label (both say the same, the label is sharper), a confident teacher that
finds the label unlikely sends it to the teacher (the label is one sample of a continuation
the teacher spreads over likelier ones), and an unsure teacher leaves the schedule's
weight. The student term adds teacher weight where the student is still far from a
confident teacher. Weights are computed without gradient: the student cannot lower its
loss by moving them. Top probability rather than normalised entropy measures confidence
because the cache holds it exactly, while entropy would need the tail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from herd.stages.codistill import CodistillConfig

_EPS = 1e-4  # how close to 0 or 1 the base weight of 'dynamic' may come, so its log-odds stay finite


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's next-token distribution for the same targets as the student: logits, or top-k from the cache."""

    logits_BSV: torch.Tensor | None = None
    ids_BSK: torch.Tensor | None = None
    logprobs_BSK: torch.Tensor | None = None  # log-probabilities at T = 1 over the whole vocabulary

    def __post_init__(self) -> None:
        if (self.logits_BSV is None) == (self.ids_BSK is None or self.logprobs_BSK is None):
            raise ValueError("teacher targets are either logits, or top-k ids with their log-probabilities")

    @property
    def is_top_k(self) -> bool:
        return self.logits_BSV is None


class Signals(NamedTuple):
    """Per-token evidence for 'dynamic', each (B, S) in [0, 1]."""

    confidence: torch.Tensor  # the teacher's top probability
    label_hardness: torch.Tensor  # 1 - p_teacher(label)
    student_gap: torch.Tensor  # JS(student || teacher) / log 2 over the support


class DistillLoss(NamedTuple):
    loss: torch.Tensor  # scalar, what the optimiser sees
    ce_BS: torch.Tensor  # per token, detached
    kl_BS: torch.Tensor  # KL(teacher_T || student_T) per token, detached, before T^2
    weights_BS: torch.Tensor  # soft weight per token
    signals: Signals | None  # None without a teacher


def log_distributions(student_logits_BSV: torch.Tensor, teacher: TeacherTargets,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities at ``temperature`` over the same support (B, S, X)."""
    student = student_logits_BSV.float()
    if not teacher.is_top_k:
        return (F.log_softmax(teacher.logits_BSV.float() / temperature, dim=-1),
                F.log_softmax(student / temperature, dim=-1))
    ids_BSK = teacher.ids_BSK.long()
    teacher_BSK = F.log_softmax(teacher.logprobs_BSK.float() / temperature, dim=-1)
    student_BSK = F.log_softmax(student.gather(-1, ids_BSK) / temperature, dim=-1)
    return teacher_BSK, student_BSK


def kl_divergence(p_log_BSX: torch.Tensor, q_log_BSX: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per token, from log-probabilities."""
    return (p_log_BSX.exp() * (p_log_BSX - q_log_BSX)).sum(-1)


def soft_loss(student_logits_BSV: torch.Tensor, teacher: TeacherTargets, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T) per token (B, S): the gradient keeps its size as T changes."""
    teacher_log, student_log = log_distributions(student_logits_BSV, teacher, temperature)
    return temperature**2 * kl_divergence(teacher_log, student_log)


@torch.no_grad()
def signals(student_logits_BSV: torch.Tensor, targets_BS: torch.Tensor, teacher: TeacherTargets) -> Signals:
    if teacher.is_top_k:
        teacher_probs_BSK = teacher.logprobs_BSK.float().exp()
        confidence = teacher_probs_BSK.max(-1).values
        label_prob = (teacher_probs_BSK * (teacher.ids_BSK.long() == targets_BS[..., None])).sum(-1)
    else:
        teacher_probs_BSV = F.softmax(teacher.logits_BSV.float(), dim=-1)
        confidence = teacher_probs_BSV.max(-1).values
        label_prob = teacher_probs_BSV.gather(-1, targets_BS[..., None]).squeeze(-1)
    teacher_log, student_log = log_distributions(student_logits_BSV, teacher, 1.0)
    mixture_log = torch.logaddexp(teacher_log, student_log) - math.log(2)
    js = 0.5 * kl_divergence(teacher_log, mixture_log) + 0.5 * kl_divergence(student_log, mixture_log)
    return Signals(confidence.clamp(0, 1), (1 - label_prob).clamp(0, 1), (js / math.log(2)).clamp(0, 1))


def scheduled_alpha(config: CodistillConfig, step: int, total_steps: int) -> float:
    """The soft weight the schedule gives ``step``: alpha_start at 0, alpha_end at the last step."""
    progress = min(1.0, max(0.0, step / max(1, total_steps - 1)))
    if config.schedule == "cosine":
        progress = 0.5 * (1 - math.cos(math.pi * progress))
    return config.alpha_start + (config.alpha_end - config.alpha_start) * progress


def soft_weights(config: CodistillConfig, step: int, total_steps: int, like_BS: torch.Tensor,
                 evidence: Signals | None = None) -> torch.Tensor:
    """The soft weight per token (B, S) in [0, 1] under ``config.scheme``."""
    if config.scheme == "none":
        return torch.zeros_like(like_BS, dtype=torch.float32)
    if config.scheme == "fixed":
        return torch.full_like(like_BS, config.alpha, dtype=torch.float32)
    base = scheduled_alpha(config, step, total_steps)
    if config.scheme == "scheduled":
        return torch.full_like(like_BS, base, dtype=torch.float32)
    if evidence is None:
        raise ValueError("scheme 'dynamic' needs the teacher's per-token signals")
    clamped = min(1 - _EPS, max(_EPS, base))
    log_odds = (math.log(clamped / (1 - clamped))
                + config.label_gain * evidence.confidence * (2 * evidence.label_hardness - 1)
                + config.student_gain * evidence.confidence * evidence.student_gap)
    return torch.sigmoid(log_odds)


def codistill_loss(student_logits_BSV: torch.Tensor, targets_BS: torch.Tensor, teacher: TeacherTargets | None,
                   config: CodistillConfig, step: int, total_steps: int,
                   token_weights_BS: torch.Tensor | None = None) -> DistillLoss:
    """Mean over targets (weighted by ``token_weights_BS`` when given) of the mixed loss, and its parts per token."""
    ce_BS = F.cross_entropy(student_logits_BSV.flatten(0, 1).float(), targets_BS.flatten(),
                            reduction="none").view_as(targets_BS)
    if config.scheme == "none":
        weights_BS = soft_weights(config, step, total_steps, ce_BS)
        per_token, kl_BS, evidence = ce_BS, torch.zeros_like(ce_BS), None
    else:
        if teacher is None:
            raise ValueError(f"scheme {config.scheme!r} needs teacher targets in the batch")
        evidence = signals(student_logits_BSV, targets_BS, teacher) if config.scheme == "dynamic" else None
        weights_BS = soft_weights(config, step, total_steps, ce_BS, evidence)
        soft_BS = soft_loss(student_logits_BSV, teacher, config.temperature)
        kl_BS = soft_BS.detach() / config.temperature**2
        per_token = (1 - weights_BS) * ce_BS + weights_BS * soft_BS
    if token_weights_BS is None:
        loss = per_token.mean()
    else:
        token_weights_BS = token_weights_BS.to(per_token)
        loss = (per_token * token_weights_BS).sum() / token_weights_BS.sum()
    return DistillLoss(loss, ce_BS.detach(), kl_BS, weights_BS, evidence)
