"""A small sampler for judging and evaluation: greedy or temperature sampling, no KV cache.

    completions = generate(model, prompts, max_new_tokens=48, stop_ids={eot}, temperature=1.0, seed=0)

Each new token is one full forward pass over the sequence so far: quadratic, and fine for
nano answers of a few dozen tokens. Prompts of the same length run together as one batch
(the model has no attention mask, so rows cannot be padded on the left). Tokens are drawn on
the CPU from a seeded generator, so a sample is the same on any device.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch

from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4
from tasks.pretrain.train import device_and_dtype


@torch.no_grad()
def generate(model: Llama4, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int],
             temperature: float = 0.0, seed: int = 0, batch_size: int = 32) -> list[list[int]]:
    """The ids sampled after each prompt, up to and including a stop id; ``temperature`` 0 is greedy."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt)].append(i)
    stops = torch.tensor(sorted(stop_ids))
    results: list[list[int]] = [[] for _ in prompts]
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            tokens_BS = torch.tensor([prompts[i] for i in rows], device=device)
            done_B = torch.zeros(len(rows), dtype=torch.bool)
            new_BT = []
            for _ in range(max_new_tokens):
                logits_BV = model(tokens_BS).logits[:, -1].float().cpu()
                if temperature > 0:
                    next_B = torch.multinomial(torch.softmax(logits_BV / temperature, -1), 1, generator=generator)[:, 0]
                else:
                    next_B = logits_BV.argmax(-1)
                new_BT.append(next_B)
                done_B |= torch.isin(next_B, stops)
                if done_B.all():
                    break
                tokens_BS = torch.cat([tokens_BS, next_B[:, None].to(device)], dim=1)
            sampled = torch.stack(new_BT, 1).tolist()
            for i, ids in zip(rows, sampled):
                ends = [j for j, t in enumerate(ids) if t in stop_ids]
                results[i] = ids[: ends[0] + 1] if ends else ids
    return results


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
