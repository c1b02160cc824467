"""Rollouts decoupled from training by a bounded queue, in the training process or in a second one.

    rollouts = make_rollouts(config, policy, renderer, problems, scratch)
    rollouts.publish(version, policy.state_dict())   # after every update
    rollouts.submit(round, pool.request(round))     # at most queue_depth rounds in flight
    batch = rollouts.get()                           # RolloutBatch: groups, the version that sampled them
    rollouts.close()

Llama 4's RL runs generation and training on separate GPUs, fully asynchronously
(LLAMA4_SPEC §2.5). Here both sides speak through two FIFOs: requests (a round's prompt ids
and system prompts, or "new weights") one way, scored groups (tensors, ids and numbers)
the other. The worker tags each batch with the weights version it sampled with; the
trainer drops batches older than ``max_lag`` versions and corrects the rest with the
importance ratio.

- :class:`InProcessRollouts` (``rollout_workers=0``) samples when a round is submitted,
  with a snapshot of the policy copied at each publish, and keeps the results in a deque.
- :class:`ProcessRollouts` (``rollout_workers=1``) runs :func:`_worker` in a spawned
  process (on ``cuda:1`` when there are two GPUs) that samples while the trainer trains.
  Weights travel as a safetensors file per version in a scratch folder, announced on the
  request queue; no model object is ever pickled.

Both sample a round from a seed of ``(config.seed, round)`` with the same weights version,
so the two modes give the same rollouts.
"""

from __future__ import annotations

import json
import logging
import os
import queue as queue_lib
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from herd.model import ModelConfig
from herd.stages.rl import RLConfig
from tasks.model.llama4 import Llama4
from tasks.problems.item import Problem, read_jsonl, write_jsonl
from tasks.rollout.groups import ChatRenderer, Group, SamplingParams, generate_groups

log = logging.getLogger(__name__)


@dataclass
class RolloutBatch:
    round: int
    version: int
    groups: list[Group]
    skipped_long: int
    seconds: float


def round_seed(seed: int, round_: int) -> int:
    return seed * 100_003 + round_


class InProcessRollouts:
    def __init__(self, policy: Llama4, renderer: ChatRenderer, problems: Sequence[Problem], params: SamplingParams,
                 config: RLConfig) -> None:
        self.snapshot = Llama4(policy.config).to(next(policy.parameters()).device).eval().requires_grad_(False)
        self.renderer, self.params, self.config = renderer, params, config
        self.problems = {p.id: p for p in problems}
        self.version = -1
        self.results: deque[RolloutBatch] = deque()

    def publish(self, version: int, state: dict[str, torch.Tensor]) -> None:
        self.snapshot.load_state_dict(state)
        self.version = version

    def submit(self, round_: int, requests: Sequence[tuple[str, str | None]]) -> None:
        if len(self.results) >= self.config.queue_depth:
            raise RuntimeError(f"the rollout queue is full ({self.config.queue_depth}); get() before submitting")
        start = time.monotonic()
        groups, skipped = generate_groups(self.snapshot, self.renderer, self.problems, requests, self.params,
                                          round_seed(self.config.seed, round_), self.version)
        self.results.append(RolloutBatch(round_, self.version, groups, skipped, time.monotonic() - start))

    def get(self) -> RolloutBatch:
        return self.results.popleft()

    def close(self) -> None:
        self.results.clear()


class ProcessRollouts:
    def __init__(self, policy: Llama4, renderer: ChatRenderer, problems: Sequence[Problem], params: SamplingParams,
                 config: RLConfig, scratch: Path, start_timeout_s: float = 600.0) -> None:
        if renderer.folder is None:
            raise ValueError("a rollout process loads the tokenizer from its folder: use ChatRenderer.load(folder)")
        self.scratch, self.config, self.start_timeout_s = scratch, config, start_timeout_s
        scratch.mkdir(parents=True, exist_ok=True)
        write_jsonl(problems, scratch / "problems.jsonl")
        context = torch.multiprocessing.get_context("spawn")
        self.requests = context.Queue()
        self.results = context.Queue(maxsize=config.queue_depth)
        setup = {
            "scratch": str(scratch), "tokenizer": str(renderer.folder),
            "model_config": policy.config.model_dump_json(), "seed": config.seed,
            "params": {**params.__dict__, "autocast": str(params.autocast).removeprefix("torch.")},
        }
        self.process = context.Process(target=_worker, args=(json.dumps(setup), self.requests, self.results),
                                       name="herd-rollouts", daemon=True)
        self.process.start()
        self.published: list[int] = []

    def publish(self, version: int, state: dict[str, torch.Tensor]) -> None:
        final = self.scratch / f"weights-v{version:06d}.safetensors"
        partial = final.with_name(f".{final.name}.partial")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(partial),
                  metadata={"version": str(version)})
        os.replace(partial, final)
        self.requests.put({"kind": "weights", "path": str(final)})
        self.published.append(version)
        # The worker is at most queue_depth rounds behind, so older files are no longer read.
        for old in self.published[: -(self.config.queue_depth + 2)]:
            (self.scratch / f"weights-v{old:06d}.safetensors").unlink(missing_ok=True)
        self.published = self.published[-(self.config.queue_depth + 2):]

    def submit(self, round_: int, requests: Sequence[tuple[str, str | None]]) -> None:
        self.requests.put({"kind": "rollouts", "round": round_, "requests": [list(r) for r in requests]})

    def get(self) -> RolloutBatch:
        waited = 0.0
        while True:
            try:
                message = self.results.get(timeout=2.0)
                break
            except queue_lib.Empty:
                waited += 2.0
                if not self.process.is_alive():
                    raise RuntimeError(f"the rollout process exited with code {self.process.exitcode}") from None
                if waited > self.start_timeout_s:
                    raise TimeoutError(f"no rollouts after {waited:.0f} s") from None
        if message["kind"] == "error":
            raise RuntimeError(f"the rollout process failed:\n{message['traceback']}")
        groups = [Group.from_message(g) for g in message["groups"]]
        return RolloutBatch(message["round"], message["version"], groups, message["skipped_long"], message["seconds"])

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the worker: results still queued are drained, or its exit would wait on them."""
        self.requests.put(None)
        deadline = time.monotonic() + timeout_s
        while self.process.is_alive() and time.monotonic() < deadline:
            try:
                self.results.get(timeout=0.5)
            except queue_lib.Empty:
                pass
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)
        for path in self.scratch.glob("weights-v*.safetensors"):
            path.unlink(missing_ok=True)


def _worker(setup_json: str, requests, results) -> None:
    """The rollout process: weights from files, sampling and scoring, scored groups back."""
    try:
        setup = json.loads(setup_json)
        scratch = Path(setup["scratch"])
        renderer = ChatRenderer.load(setup["tokenizer"])
        problems = {p.id: p for p in read_jsonl(scratch / "problems.jsonl")}
        raw = setup["params"]
        params = SamplingParams(**{**raw, "autocast": getattr(torch, raw["autocast"])})
        if torch.cuda.is_available():
            device = torch.device("cuda", 1 if torch.cuda.device_count() > 1 else 0)
        else:
            device = torch.device("cpu")
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        model = Llama4(ModelConfig.model_validate_json(setup["model_config"])).to(device).eval()
        model.requires_grad_(False)
        version = -1
        while (message := requests.get()) is not None:
            if message["kind"] == "weights":
                model.load_state_dict(load_file(message["path"]))
                with safe_open(message["path"], "pt") as weights:
                    version = int(weights.metadata()["version"])
                continue
            start = time.monotonic()
            groups, skipped = generate_groups(model, renderer, problems, [tuple(r) for r in message["requests"]],
                                              params, round_seed(setup["seed"], message["round"]), version)
            results.put({"kind": "rollouts", "round": message["round"], "version": version,
                         "groups": [g.to_message() for g in groups], "skipped_long": skipped,
                         "seconds": time.monotonic() - start})
    except BaseException:  # noqa: BLE001 - whatever failed, the trainer must hear of it instead of waiting
        results.put({"kind": "error", "traceback": traceback.format_exc()})


def make_rollouts(config: RLConfig, policy: Llama4, renderer: ChatRenderer, problems: Sequence[Problem],
                  params: SamplingParams, scratch: Path):
    if config.rollout_workers == 1:
        return ProcessRollouts(policy, renderer, problems, params, config, scratch)
    return InProcessRollouts(policy, renderer, problems, params, config)
