"""Config of the ``rl`` stage: online GRPO-style RL on problems with checkable answers, with a pass@k curriculum.

One round samples a group of ``group_size`` completions for each requested prompt,
scores them with the problem's checker, and takes ``updates_per_round`` optimizer steps
on the groups it keeps. Under ``curriculum="passk"`` a round requests every prompt of the
active pool, which re-scores the pool with the current policy (LLAMA4_SPEC §2.5, §4):
prompts whose pass@k reaches ``easy_threshold`` leave it for good, groups whose rewards are
all equal are not trained on, and the ``prompts_per_round`` groups trained on mix
capabilities. ``curriculum="uniform"`` (the ablation's baseline) requests
``prompts_per_round`` prompts uniformly at random and trains on all of them.

Of the inherited fields, ``batch_size`` is the rows of one forward/backward (gradients
accumulate over a round), ``seq_len`` bounds prompt plus completion, and ``steps`` is not
used: the LR schedule runs over :attr:`RLConfig.optimizer_steps`, ``rounds * updates_per_round``.
"""

from __future__ import annotations

from datetime import timedelta

from typing import Literal

from pydantic import Field, model_validator

from herd.config import operational
from herd.stage import Input, Resources, StageSpec
from herd.stages.models import VARIANTS
from herd.stages.shared import POST_TRAINING_INPUTS
from herd.stages.training import TrainingConfig


class RLConfig(TrainingConfig):
    seq_len: int = Field(256, ge=8, description="Longest prompt plus completion; longer prompts are skipped.")
    batch_size: int = Field(32, ge=1, description="Rollout rows per forward/backward; a round's gradients accumulate.")
    steps: int = Field(0, ge=0, le=0, description="Not used: the schedule runs over rounds * updates_per_round steps.")
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(2, ge=0)
    weight_decay: float = Field(0.0, ge=0)

    rounds: int = Field(40, ge=1, description="Rollout batches consumed; one policy version each.")
    updates_per_round: int = Field(1, ge=1, description="Optimizer steps on one round's rollouts (GRPO's mu).")
    group_size: int = Field(8, ge=2, description="Completions sampled per prompt (GRPO's G); also pass@k's n.")
    k: int = Field(2, ge=1, description="k of pass@k, estimated from the group's n = group_size samples.")
    prompts_per_round: int = Field(8, ge=1, description="Groups trained on per round (uniform: prompts sampled).")
    pool_size: int = Field(32, ge=1, description="Active prompts of the passk curriculum, re-scored every round.")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs are of logits / temperature.")
    top_p: float = Field(1.0, gt=0, le=1)
    clip_epsilon: float = Field(0.2, gt=0, lt=1)
    clip_epsilon_high: float | None = Field(None, gt=0, description="Upper clip (DAPO's clip-higher); None: same.")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the k3 KL to the reference in the loss; 0: reported only.")
    curriculum: Literal["passk", "uniform"] = "passk"
    pass_threshold: float = Field(1.0, gt=0, le=1, description="A completion passes (pass@k) at this reward or more.")
    easy_threshold: float = Field(
        0.9, gt=0, le=1, description="Prompts with pass@k at or above this are solved and dropped (n=8, k=2: 6 of 8)."
    )
    retire_after: int = Field(
        3, ge=0, description="Rounds in a row a prompt's group has zero advantage before it yields its pool slot "
                             "(it goes back to the end of the reservoir); 0: never."
    )
    rescore_every: int = Field(1, ge=1, description="Rounds between re-scorings of the whole pool (passk).")
    rollout_budget: int = Field(0, ge=0, description="Stop once this many completions were sampled; 0: run all rounds.")
    queue_depth: int = Field(
        2, ge=1, description="Rollout batches in flight: 1 samples each round with the newest weights; 2 samples the "
                             "next round while this one trains (one version behind)."
    )
    max_lag: int = Field(1, ge=0, description="Rollouts more policy versions old than this are dropped untrained.")
    rollout_workers: Literal[0, 1] = operational(
        0, "0: rollouts sampled in the training process; 1: in a separate process fed through queues."
    )
    sample_rows: int = operational(64, "Largest batch of rows sampled together (prompts of one length).")
    reward_workers: int = operational(8, "Threads running checkers (code checks wait on their sandbox).")
    checkpoint_every: int = operational(1, "Rounds between checkpoints (weights, optimizer, pool state).")
    log_every: int = operational(1, "Rounds between metric logs.")

    @model_validator(mode="after")
    def _consistent(self) -> "RLConfig":
        if self.k > self.group_size:
            raise ValueError(f"k ({self.k}) cannot exceed group_size ({self.group_size}): pass@k needs n >= k samples")
        if self.max_new_tokens >= self.seq_len:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) leaves no room for a prompt "
                             f"in seq_len ({self.seq_len})")
        if self.engine != "plain":
            raise ValueError("rl runs on the plain engine (one trainer process); engine=deepspeed is not supported")
        return self

    @property
    def optimizer_steps(self) -> int:
        return self.rounds * self.updates_per_round

    @property
    def epsilon_high(self) -> float:
        return self.clip_epsilon if self.clip_epsilon_high is None else self.clip_epsilon_high


SPECS = tuple(StageSpec(
    name="rl",
    summary="online GRPO-style RL with a pass@k curriculum, rewards from the problems' checkers",
    config_type=RLConfig,
    config_section="rl",
    variant=variant,
    inputs={"model": Input("the variant's SFT output", from_stage=f"{variant}.sft"), **POST_TRAINING_INPUTS},
    # One process: the trainer on the first GPU, the rollout sampler on the second (tasks/rl/queue.py).
    resources=Resources(cpu="8", memory="120Gi", gpus=2, shm="16Gi", gpus_per_worker=2),
    timeout=timedelta(hours=24),
    resumable=True,
) for variant in VARIANTS)
