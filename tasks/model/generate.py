"""Generation from :class:`~tasks.model.llama4.Llama4`: a key/value cache and one sampler.

    out = sample(model, prompt_BP, max_new_tokens=48, stop_id=eot, temperature=1.0, top_p=0.9, generator=g)
    out.tokens      # (B, P + N): the prompt, then the sampled tokens, ``stop_id`` after a row's end
    out.logprobs    # (B, N): log-prob of each sampled token under softmax(logits / temperature)
    out.mask        # (B, N): True on sampled tokens up to and including ``stop_id``
    answers = generate(model, prompts, max_new_tokens=48, stop_id=eot, temperature=0.0, seed=0)  # any lengths

Shape legend: B rows, P prompt length, N new tokens, L cache length, K key/value heads,
Dh head width, V vocabulary.

The model's own forward runs the positions after those a :class:`KVCache` holds
(``model(tokens, cache)``), so each new token costs one position, not the whole prefix.
The model has no padding mask, so the rows of one :func:`sample` call share a prompt
length; :func:`generate` and :func:`by_length` batch prompts of different lengths by
length. ``temperature`` 0 is greedy. Tokens are drawn on the CPU from ``generator``, so a
seed gives the same samples on any device.

The recorded log-probs ignore top-p truncation: they are those RL's trainer recomputes
(softmax of logits / temperature), so the importance ratio is exactly 1 on-policy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from tasks.model.llama4 import Llama4, rope_frequencies, temperature_scale


class KVCache:
    """Per layer, keys and values (B, K, L, Dh) of the first ``length`` positions of ``rows`` sequences.

    It also keeps the position tables (RoPE rotations, NoPE query temperatures) for all
    ``capacity`` positions, so a decode step slices them instead of computing them again.
    """

    def __init__(self, model: Llama4, rows: int, capacity: int) -> None:
        config = model.config
        device = next(model.parameters()).device
        self.shape = (rows, config.n_kv_heads, capacity, config.head_dim)
        self.keys: list[torch.Tensor | None] = [None] * config.n_layers
        self.values: list[torch.Tensor | None] = [None] * config.n_layers
        self.length = 0
        self.freqs_LDh2 = rope_frequencies(config, capacity, device)
        self.temperature_L = temperature_scale(capacity, config, device)

    def write(self, layer: int, k_BKSDh: torch.Tensor, v_BKSDh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values of the positions after ``length``; return those of every position so far."""
        if self.keys[layer] is None:  # allocated on first use, in the dtype autocast gives the keys
            self.keys[layer] = k_BKSDh.new_zeros(self.shape)
            self.values[layer] = v_BKSDh.new_zeros(self.shape)
        end = self.length + k_BKSDh.shape[2]
        if end > self.shape[2]:
            raise ValueError(f"the cache holds {self.shape[2]} positions, not {end}")
        self.keys[layer][:, :, self.length : end] = k_BKSDh
        self.values[layer][:, :, self.length : end] = v_BKSDh
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


@dataclass
class Completions:
    tokens: torch.Tensor  # (B, P + N) int64
    logprobs: torch.Tensor  # (B, N) float32, 0 past a row's end
    mask: torch.Tensor  # (B, N) bool
    prompt_length: int

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)


def nucleus(probs_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest set of most likely tokens whose mass reaches ``top_p``, renormalised."""
    if top_p >= 1.0:
        return probs_BV
    sorted_BV, order_BV = probs_BV.sort(-1, descending=True)
    before_BV = sorted_BV.cumsum(-1) - sorted_BV  # mass of the tokens ranked above each one
    sorted_BV = sorted_BV.masked_fill(before_BV >= top_p, 0.0)
    kept_BV = torch.zeros_like(probs_BV).scatter(-1, order_BV, sorted_BV)
    return kept_BV / kept_BV.sum(-1, keepdim=True)


@torch.no_grad()
def sample(model: Llama4, prompt_BP: torch.Tensor, max_new_tokens: int, stop_id: int, temperature: float = 1.0,
           top_p: float = 1.0, generator: torch.Generator | None = None) -> Completions:
    """Up to ``max_new_tokens`` after each row of ``prompt_BP``; a row ends at ``stop_id``; ``temperature`` 0 is greedy."""
    B, P = prompt_BP.shape
    cache = KVCache(model, B, P + max_new_tokens)
    logits_BV = model(prompt_BP, cache, last=1).logits[:, -1]
    done_B = torch.zeros(B, dtype=torch.bool)
    new_tokens, logprobs, masks = [], [], []
    for step in range(max_new_tokens):
        logits_BV = logits_BV.float().cpu()
        if temperature > 0:
            logp_BV = torch.log_softmax(logits_BV / temperature, -1)
            next_B = torch.multinomial(nucleus(logp_BV.exp(), top_p), 1, generator=generator)[:, 0]
        else:
            logp_BV = torch.log_softmax(logits_BV, -1)
            next_B = logits_BV.argmax(-1)
        masks.append(~done_B)
        logprobs.append(logp_BV.gather(1, next_B[:, None])[:, 0].masked_fill(done_B, 0.0))
        next_B = next_B.masked_fill(done_B, stop_id)
        new_tokens.append(next_B)
        done_B = done_B | (next_B == stop_id)
        if done_B.all() or step == max_new_tokens - 1:
            break
        logits_BV = model(next_B[:, None].to(prompt_BP.device), cache).logits[:, -1]
    return Completions(torch.cat([prompt_BP.cpu(), torch.stack(new_tokens, 1)], 1), torch.stack(logprobs, 1),
                       torch.stack(masks, 1), P)


def by_length(prompts: Sequence[Sequence[int]], rows: int) -> Iterator[list[int]]:
    """Indices of ``prompts`` in batches of at most ``rows``, each of one prompt length, shortest first.

    Within a length the prompts keep their order, so copies of one prompt given next to
    each other stay in one batch when ``rows`` is a multiple of the copies.
    """
    indices: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        indices[len(prompt)].append(i)
    for length in sorted(indices):
        group = indices[length]
        for start in range(0, len(group), rows):
            yield group[start : start + rows]


@torch.no_grad()
def generate(model: Llama4, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_id: int,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 32) -> list[list[int]]:
    """The ids after each prompt, up to and including ``stop_id`` (or ``max_new_tokens`` of them).

    One generator seeded by ``seed`` draws for every batch in turn.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    results: list[list[int]] = [[] for _ in prompts]
    for rows in by_length(prompts, batch_size):
        prompt_BP = torch.tensor([list(prompts[i]) for i in rows], device=device)
        out = sample(model, prompt_BP, max_new_tokens, stop_id, temperature, 1.0, generator)
        for i, ids, mask in zip(rows, out.tokens[:, out.prompt_length :].tolist(), out.mask.tolist()):
            results[i] = [t for t, m in zip(ids, mask) if m]
    return results
