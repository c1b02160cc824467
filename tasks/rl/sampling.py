"""Batched sampling from :class:`~tasks.model.llama4.Llama4` with a key/value cache kept here.

    out = sample(model, prompt_BP, max_new_tokens=48, temperature=1.0, top_p=1.0, stop_id=eot, generator=g)
    out.tokens      # (B, P + N): the prompt, then the sampled tokens, ``stop_id`` after a row's end
    out.logprobs    # (B, N): log-prob of each sampled token under softmax(logits / temperature)
    out.mask        # (B, N): True on sampled tokens up to and including ``stop_id``
    out.prompt_length

Shape legend: B rows, P prompt length, N new tokens, S positions in one call, L cache
length, H query heads, K key/value heads, Dh head width, V vocabulary.

The model has no cache and no attention mask, so every row of a call has the same prompt
length (an RL group is one prompt repeated). :func:`cached_logits` runs the model's own
modules on the new positions only, against cached keys and values, with the same
position-dependent pieces the full forward uses (RoPE and chunked attention on RoPE
layers, temperature-tuned queries on NoPE layers); ``tests/test_rl.py`` checks it against
``Llama4.forward``. Without it each new token would recompute the whole prefix.

The recorded log-probs ignore top-p truncation: they are those the trainer recomputes
(softmax of logits / temperature), so the importance ratio is exactly 1 on-policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tasks.model.llama4 import Llama4, apply_rope, rms_norm, rope_frequencies, temperature_scale


@dataclass
class Completions:
    tokens: torch.Tensor  # (B, P + N) int64
    logprobs: torch.Tensor  # (B, N) float32, 0 past a row's end
    mask: torch.Tensor  # (B, N) bool
    prompt_length: int

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)


class KVCache:
    """Per layer, keys and values (B, K, L, Dh) for positions written so far."""

    def __init__(self, model: Llama4, rows: int, length: int) -> None:
        config = model.config
        self.shape = (rows, config.n_kv_heads, length, config.head_dim)
        self.keys: list[torch.Tensor | None] = [None] * config.n_layers
        self.values: list[torch.Tensor | None] = [None] * config.n_layers
        self.freqs_LDh2 = rope_frequencies(config, length, next(model.parameters()).device)
        self.temperature_L = temperature_scale(length, config, next(model.parameters()).device)

    def write(self, layer: int, start: int, k_BKSDh: torch.Tensor, v_BKSDh: torch.Tensor):
        if self.keys[layer] is None:
            self.keys[layer] = k_BKSDh.new_zeros(self.shape)
            self.values[layer] = v_BKSDh.new_zeros(self.shape)
        end = start + k_BKSDh.shape[2]
        self.keys[layer][:, :, start:end] = k_BKSDh
        self.values[layer][:, :, start:end] = v_BKSDh
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def _attention_mask(start: int, new: int, chunk: int | None, device) -> torch.Tensor:
    """(S, start + S) True where query position ``start + i`` sees key ``j``: causal, and in its chunk if ``chunk``."""
    query_S1 = torch.arange(start, start + new, device=device)[:, None]
    key_1L = torch.arange(start + new, device=device)[None, :]
    visible = key_1L <= query_S1
    if chunk is not None:
        visible &= key_1L // chunk == query_S1 // chunk
    return visible


def cached_logits(model: Llama4, tokens_BS: torch.Tensor, cache: KVCache, start: int) -> torch.Tensor:
    """Logits (B, S, V) of positions ``start .. start + S - 1``, given the cache holds every earlier position."""
    config = model.config
    B, S = tokens_BS.shape
    freqs_SDh2 = cache.freqs_LDh2[start : start + S]
    h_BSD = model.tok_embeddings(tokens_BS)
    for layer, block in enumerate(model.layers):
        attention = block.attention
        x_BSD = block.attention_norm(h_BSD)
        q_BSHDh = attention.wq(x_BSD).view(B, S, config.n_heads, config.head_dim)
        k_BSKDh = attention.wk(x_BSD).view(B, S, config.n_kv_heads, config.head_dim)
        v_BSKDh = attention.wv(x_BSD).view(B, S, config.n_kv_heads, config.head_dim)
        if attention.use_rope:
            q_BSHDh, k_BSKDh = apply_rope(q_BSHDh, freqs_SDh2), apply_rope(k_BSKDh, freqs_SDh2)
            if attention.qk_norm:
                q_BSHDh, k_BSKDh = rms_norm(q_BSHDh, config.norm_eps), rms_norm(k_BSKDh, config.norm_eps)
        elif config.temperature_tuning:
            q_BSHDh = q_BSHDh * cache.temperature_L[start : start + S][None, :, None, None].to(q_BSHDh.dtype)
        keys_BKLDh, values_BKLDh = cache.write(layer, start, k_BSKDh.transpose(1, 2), v_BSKDh.transpose(1, 2))
        mask_SL = _attention_mask(start, S, config.chunk_size if attention.use_rope else None, tokens_BS.device)
        out_BHSDh = F.scaled_dot_product_attention(q_BSHDh.transpose(1, 2), keys_BKLDh, values_BKLDh,
                                                   attn_mask=mask_SL, enable_gqa=True)
        h_BSD = h_BSD + attention.wo(out_BHSDh.transpose(1, 2).reshape(B, S, -1))
        normed_BSD = block.ffn_norm(h_BSD)
        if block.moe is not None:
            h_BSD = h_BSD + block.moe(normed_BSD)[0]
        else:
            h_BSD = h_BSD + block.feed_forward(normed_BSD)
    return model.output(model.norm(h_BSD))


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
def sample(model: Llama4, prompt_BP: torch.Tensor, max_new_tokens: int, temperature: float, top_p: float,
           stop_id: int, generator: torch.Generator | None = None) -> Completions:
    """Sample up to ``max_new_tokens`` after each row of ``prompt_BP``; a row ends at ``stop_id``.

    Tokens are drawn on the CPU from ``generator``, so a seed gives the same samples on any device.
    """
    B, P = prompt_BP.shape
    cache = KVCache(model, B, P + max_new_tokens)
    logits_BV = cached_logits(model, prompt_BP, cache, 0)[:, -1]
    done_B = torch.zeros(B, dtype=torch.bool)
    new_tokens, logprobs, masks = [], [], []
    for step in range(max_new_tokens):
        scaled_BV = logits_BV.float().cpu() / temperature
        logp_BV = torch.log_softmax(scaled_BV, -1)
        next_B = torch.multinomial(nucleus(logp_BV.exp(), top_p), 1, generator=generator)[:, 0]
        masks.append(~done_B)
        logprobs.append(logp_BV.gather(1, next_B[:, None])[:, 0].masked_fill(done_B, 0.0))
        next_B = next_B.masked_fill(done_B, stop_id)
        new_tokens.append(next_B)
        done_B = done_B | (next_B == stop_id)
        if done_B.all() or step == max_new_tokens - 1:
            break
        logits_BV = cached_logits(model, next_B[:, None].to(prompt_BP.device), cache, P + step)[:, -1]
    return Completions(torch.cat([prompt_BP.cpu(), torch.stack(new_tokens, 1)], 1), torch.stack(logprobs, 1),
                       torch.stack(masks, 1), P)
