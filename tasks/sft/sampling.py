"""Answers sampled for judging and evaluation, on RL's key/value-cached sampler.

    completions = generate(model, prompts, max_new_tokens=48, stop_id=eot, temperature=1.0, seed=0)

Prompts of the same length run together as one batch (the model has no attention mask, so
rows cannot be padded on the left). ``temperature`` 0 is greedy; above it, tokens are drawn
by :func:`tasks.rl.sampling.sample` on the CPU from a seeded generator, so a sample is the
same on any device.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch

from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4
from tasks.pretrain.train import device_and_dtype
from tasks.rl.sampling import KVCache, cached_logits, sample


@torch.no_grad()
def generate(model: Llama4, prompts: list[list[int]], max_new_tokens: int, stop_id: int,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 32) -> list[list[int]]:
    """The ids after each prompt, up to and including ``stop_id`` (or ``max_new_tokens`` of them)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt)].append(i)
    results: list[list[int]] = [[] for _ in prompts]
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            prompt_BP = torch.tensor([prompts[i] for i in rows], device=device)
            if temperature > 0:
                out = sample(model, prompt_BP, max_new_tokens, temperature, 1.0, stop_id, generator)
                new_BN, mask_BN = out.tokens[:, length:], out.mask
            else:
                new_BN, mask_BN = greedy(model, prompt_BP, max_new_tokens, stop_id)
            for i, ids, mask in zip(rows, new_BN.tolist(), mask_BN.tolist()):
                results[i] = [t for t, m in zip(ids, mask) if m]
    return results


@torch.no_grad()
def greedy(model: Llama4, prompt_BP: torch.Tensor, max_new_tokens: int, stop_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new tokens (B, N), mask (B, N))``: the most likely token each time, True up to and including ``stop_id``."""
    B, P = prompt_BP.shape
    cache = KVCache(model, B, P + max_new_tokens)
    logits_BV = cached_logits(model, prompt_BP, cache, 0)[:, -1]
    done_B = torch.zeros(B, dtype=torch.bool)
    new_tokens, masks = [], []
    for step in range(max_new_tokens):
        next_B = logits_BV.float().argmax(-1).cpu().masked_fill(done_B, stop_id)
        masks.append(~done_B)
        new_tokens.append(next_B)
        done_B = done_B | (next_B == stop_id)
        if done_B.all() or step == max_new_tokens - 1:
            break
        logits_BV = cached_logits(model, next_B[:, None].to(prompt_BP.device), cache, P + step)[:, -1]
    return torch.stack(new_tokens, 1), torch.stack(masks, 1)


@contextmanager
def placed(model: Llama4, config: TrainingConfig):
    """``model`` on the training device under its autocast for a while, back on the CPU after."""
    device, dtype = device_and_dtype(config)
    model.to(device)
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            yield model
    finally:
        model.to("cpu")
