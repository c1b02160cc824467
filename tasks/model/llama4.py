"""The Llama 4 text decoder, compact and sparse.

Shape legend: B batch, S sequence, D model width, H query heads, K key/value heads,
Dh head width, C attention chunk, N chunks, T tokens (B*S), E experts, F expert width,
A token-to-expert assignments (T*top_k), L positions held in a key/value cache.

What differs from ``transformers.Llama4ForCausalLM`` is only how the same function is
computed: experts run on the tokens routed to them (sorted dispatch), never on all
tokens; RoPE layers attend within chunks by reshaping, instead of masking a full S*S
score matrix. ``tests/test_model.py`` checks the logits against transformers.

``model(tokens, cache)`` runs only the positions after those a
:class:`~tasks.model.generate.KVCache` holds, attending to the cached keys through an
explicit causal (and, on RoPE layers, in-chunk) mask; ``tests/test_generate.py`` checks it
against the full forward. ``model(tokens, last=n)`` computes the logits of the last ``n``
positions only: the output head is about a third of a nano forward, and a prompt's prefill,
a needle's answer or a judge's reference answer needs only a few positions' logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from herd.model import ModelConfig

if TYPE_CHECKING:
    from tasks.model.generate import KVCache


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.eps) * self.weight


def rope_frequencies(config: ModelConfig, seq_len: int, device=None) -> torch.Tensor:
    """Complex rotations (S, Dh/2) for positions 0..S-1, Llama-3 scaled when the config says so."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
    if config.rope_scaling is not None:
        inv_freq = _llama3_scaled(inv_freq, config.rope_scaling)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float, device=device), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def _llama3_scaled(inv_freq: torch.Tensor, scaling) -> torch.Tensor:
    """Long wavelengths are slowed by ``factor``, short ones kept, the band between interpolated."""
    old_context = scaling.original_max_position_embeddings
    low_wavelen = old_context / scaling.low_freq_factor
    high_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    middle = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(middle, blended, scaled)


def apply_rope(x_BSHDh: torch.Tensor, freqs_SDh2: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent (interleaved) pairs, as Llama 4 does."""
    pairs = torch.view_as_complex(x_BSHDh.float().reshape(*x_BSHDh.shape[:-1], -1, 2))
    rotated = torch.view_as_real(pairs * freqs_SDh2[None, :, None, :]).flatten(3)
    return rotated.type_as(x_BSHDh)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.config = config
        self.layer = layer
        self.use_rope = not config.is_nope(layer)
        self.qk_norm = config.use_qk_norm and self.use_rope
        self.wq = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x_BSD: torch.Tensor, freqs_SDh2: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """``x_BSD`` at positions 0..S-1, or with ``cache`` at the S positions after the ``cache.length`` it holds."""
        config = self.config
        B, S, _ = x_BSD.shape
        start = 0 if cache is None else cache.length
        q_BSHDh = self.wq(x_BSD).view(B, S, config.n_heads, config.head_dim)
        k_BSKDh = self.wk(x_BSD).view(B, S, config.n_kv_heads, config.head_dim)
        v_BSKDh = self.wv(x_BSD).view(B, S, config.n_kv_heads, config.head_dim)
        if self.use_rope:
            q_BSHDh, k_BSKDh = apply_rope(q_BSHDh, freqs_SDh2), apply_rope(k_BSKDh, freqs_SDh2)
            if self.qk_norm:  # weightless, after RoPE
                q_BSHDh, k_BSKDh = rms_norm(q_BSHDh, config.norm_eps), rms_norm(k_BSKDh, config.norm_eps)
        elif config.temperature_tuning:
            if cache is None:
                scale_S = temperature_scale(S, config, x_BSD.device)
            else:
                scale_S = cache.temperature_L[start : start + S]
            q_BSHDh = q_BSHDh * scale_S[None, :, None, None].to(q_BSHDh.dtype)
        q, k, v = (t.transpose(1, 2) for t in (q_BSHDh, k_BSKDh, v_BSKDh))
        chunk = config.chunk_size if self.use_rope else None
        if cache is not None:  # the new positions see the held ones through a mask, chunks included
            k_BKLDh, v_BKLDh = cache.write(self.layer, k, v)
            mask_SL = visible(start, S, chunk, q.device)
            out_BHSDh = F.scaled_dot_product_attention(q, k_BKLDh, v_BKLDh, attn_mask=mask_SL, enable_gqa=True)
        elif chunk is not None and S > chunk:
            out_BHSDh = chunked_causal_attention(q, k, v, chunk)
        else:
            out_BHSDh = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.wo(out_BHSDh.transpose(1, 2).reshape(B, S, -1))


def temperature_scale(seq_len: int, config: ModelConfig, device=None) -> torch.Tensor:
    """``1 + attn_scale * log(floor((pos + 1) / floor_scale) + 1)``: exactly 1 below ``floor_scale``."""
    positions = torch.arange(seq_len, device=device, dtype=torch.float)
    return torch.log1p(torch.floor((positions + 1.0) / config.floor_scale)) * config.attn_scale + 1.0


def visible(start: int, new: int, chunk: int | None, device=None) -> torch.Tensor:
    """(S, start + S) True where query position ``start + i`` sees key ``j``: causal, and in its chunk if ``chunk``."""
    query_S1 = torch.arange(start, start + new, device=device)[:, None]
    key_1L = torch.arange(start + new, device=device)[None, :]
    seen = key_1L <= query_S1
    if chunk is not None:
        seen &= key_1L // chunk == query_S1 // chunk
    return seen


def chunked_causal_attention(q_BHSDh, k_BKSDh, v_BKSDh, chunk: int) -> torch.Tensor:
    """Causal attention inside each chunk of ``chunk`` positions: O(S*C) work instead of O(S*S)."""
    B, H, S, Dh = q_BHSDh.shape
    pad = (-S) % chunk
    if pad:  # padding at the end changes no earlier position under a causal mask
        q_BHSDh, k_BKSDh, v_BKSDh = (F.pad(t, (0, 0, 0, pad)) for t in (q_BHSDh, k_BKSDh, v_BKSDh))
    N = (S + pad) // chunk

    def by_chunk(t: torch.Tensor) -> torch.Tensor:
        heads = t.shape[1]
        return t.view(B, heads, N, chunk, Dh).transpose(1, 2).reshape(B * N, heads, chunk, Dh)

    out = F.scaled_dot_product_attention(by_chunk(q_BHSDh), by_chunk(k_BKSDh), by_chunk(v_BKSDh),
                                         is_causal=True, enable_gqa=True)
    return out.view(B, N, H, chunk, Dh).transpose(1, 2).reshape(B, H, N * chunk, Dh)[:, :, :S]


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Experts(nn.Module):
    """E SwiGLU experts in two stacked weights, laid out as transformers stores them."""

    def __init__(self, n_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Parameter(torch.empty(n_experts, dim, 2 * hidden))  # [gate | up]
        self.down = nn.Parameter(torch.empty(n_experts, hidden, dim))

    # Below this many routed rows per expert, one padded batched matmul over all experts
    # beats a loop of small matmuls (measured: bench/model_throughput.py, 16 experts, seq 256).
    PADDED_ROWS_PER_EXPERT = 256
    # The padded block computes E x the busiest expert's rows. A router that sends most tokens to
    # one expert (a trained nano Behemoth sends 88-97%) would make that 14x the real work, so
    # beyond this much padding the loop is cheaper (measured: 6.5x less CPU on such a batch).
    MAX_PADDED_WORK = 2

    def forward(self, routed_in_AD: torch.Tensor, tokens_per_expert: list[int]) -> torch.Tensor:
        """``routed_in_AD`` is sorted by expert; expert e gets the next ``tokens_per_expert[e]`` rows."""
        n_experts, rows = len(tokens_per_expert), routed_in_AD.shape[0]
        if rows <= self.PADDED_ROWS_PER_EXPERT * n_experts \
                and n_experts * max(tokens_per_expert, default=0) <= self.MAX_PADDED_WORK * rows:
            return self._padded(routed_in_AD, tokens_per_expert)
        return self._looped(routed_in_AD, tokens_per_expert)

    def _padded(self, routed_in_AD: torch.Tensor, tokens_per_expert: list[int]) -> torch.Tensor:
        """Rows scattered into an (E, C, D) block, C the busiest expert's count; two bmm; gathered back.

        Padding rows are zero and get zero gradient, so the result equals the loop's.
        """
        counts_E = torch.tensor(tokens_per_expert, device=routed_in_AD.device)
        capacity = max(tokens_per_expert)
        expert_A = torch.repeat_interleave(torch.arange(len(tokens_per_expert), device=counts_E.device), counts_E)
        slot_A = torch.arange(routed_in_AD.shape[0], device=counts_E.device) - (counts_E.cumsum(0) - counts_E)[expert_A]
        padded_ECD = routed_in_AD.new_zeros(len(tokens_per_expert), capacity, routed_in_AD.shape[-1])
        padded_ECD = padded_ECD.index_put((expert_A, slot_A), routed_in_AD)
        gate_ECF, up_ECF = torch.bmm(padded_ECD, self.gate_up).chunk(2, dim=-1)
        out_ECD = torch.bmm(F.silu(gate_ECF) * up_ECF, self.down)
        return out_ECD[expert_A, slot_A]

    def _looped(self, routed_in_AD: torch.Tensor, tokens_per_expert: list[int]) -> torch.Tensor:
        # unbind once: indexing the stacked parameter per expert would make backward build
        # one full-size gradient per expert and sum them, E times the memory traffic.
        gate_up_EDF2, down_EFD = self.gate_up.unbind(0), self.down.unbind(0)
        outputs = []
        for expert, rows_GD in enumerate(torch.split(routed_in_AD, tokens_per_expert)):
            if rows_GD.shape[0] == 0:
                continue
            gate_GF, up_GF = (rows_GD @ gate_up_EDF2[expert]).chunk(2, dim=-1)
            outputs.append((F.silu(gate_GF) * up_GF) @ down_EFD[expert])
        return torch.cat(outputs) if outputs else routed_in_AD.new_zeros(0, self.down.shape[-1])


@dataclass
class RouterStats:
    """What training needs from a MoE layer besides its output: the balance loss and the load."""

    aux_loss: torch.Tensor
    tokens_per_expert: torch.Tensor  # (E,), counts


class MoE(nn.Module):
    """Sigmoid top-k router whose score scales the expert *input*, plus an always-on shared expert."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.n_experts = config.n_experts
        self.router = nn.Linear(config.dim, config.n_experts, bias=False)
        self.experts = Experts(config.n_experts, config.dim, config.ffn_dim)
        self.shared = FeedForward(config.dim, config.ffn_dim)
        # Aux-loss-free balancing (a bias that steers selection only, updated outside
        # autograd from the load). Zero unless training turns it on.
        self.register_buffer("selection_bias", torch.zeros(config.n_experts), persistent=True)

    @torch.no_grad()
    def update_selection_bias(self, tokens_per_expert_E: torch.Tensor, rate: float) -> None:
        """Aux-loss-free balancing: raise the bias of under-loaded experts, lower it for over-loaded ones."""
        load_E = tokens_per_expert_E.float()
        self.selection_bias += rate * torch.sign(load_E.mean() - load_E)

    def forward(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        logits_TE = self.router(x_TD)
        _, chosen_TK = torch.topk(logits_TE + self.selection_bias, self.top_k, dim=-1)
        scores_TK = torch.sigmoid(logits_TE.gather(1, chosen_TK).float()).type_as(x_TD)

        expert_A = chosen_TK.reshape(-1)
        order_A = torch.argsort(expert_A, stable=True)
        token_A = order_A // self.top_k
        counts_E = torch.bincount(expert_A, minlength=self.n_experts)
        routed_in_AD = x_TD[token_A] * scores_TK.reshape(-1)[order_A, None]
        routed_out_AD = self.experts(routed_in_AD, counts_E.tolist())
        out_TD = self.shared(x_TD).index_add(0, token_A, routed_out_AD)

        # Switch-style balance loss on normalised sigmoid scores: E * sum_e(load_e * mean_prob_e).
        probs_TE = torch.sigmoid(logits_TE.float())
        probs_TE = probs_TE / probs_TE.sum(-1, keepdim=True)
        load_E = counts_E.float() / expert_A.numel()
        aux = self.n_experts * (load_E * probs_TE.mean(0)).sum()
        return out_TD.view_as(x_BSD), RouterStats(aux, counts_E)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.is_moe = config.is_moe(layer)
        self.moe = MoE(config) if self.is_moe else None
        self.feed_forward = None if self.is_moe else FeedForward(config.dim, config.dense_ffn_dim)

    def forward(self, x_BSD: torch.Tensor, freqs_SDh2: torch.Tensor,
                cache: KVCache | None = None) -> tuple[torch.Tensor, RouterStats | None]:
        h_BSD = x_BSD + self.attention(self.attention_norm(x_BSD), freqs_SDh2, cache)
        normed = self.ffn_norm(h_BSD)
        if self.moe is not None:
            out_BSD, stats = self.moe(normed)
            return h_BSD + out_BSD, stats
        return h_BSD + self.feed_forward(normed), None


@dataclass
class Output:
    logits: torch.Tensor  # (B, S, V); (B, last, V) when the forward was asked for the last positions only
    router: list[RouterStats]  # one per MoE layer

    @property
    def aux_loss(self) -> torch.Tensor:
        return torch.stack([r.aux_loss for r in self.router]).mean() if self.router else self.logits.new_zeros(())


def param_group(name: str) -> str:
    """The µP role of a parameter: ``embedding``, ``hidden`` (matrices inside blocks), ``output`` or ``norms``.

    Under µP with Adam (Tensor Programs V), as the width grows by m relative to a tuned
    base, hidden matrices get init std / sqrt(m) and LR / m, the output layer init std / m
    and LR / m, embeddings and norms stay as tuned: so one LR tuned on a narrow proxy
    transfers to the wide model. That is herd's stand-in for MetaP, whose formulas are
    unpublished.
    """
    if name.startswith("tok_embeddings"):
        return "embedding"
    if name.startswith("output"):
        return "output"
    if "norm" in name:
        return "norms"
    return "hidden"


class Llama4(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # Keep only each block's input and recompute the block in backward: activation memory
        # of one block instead of all, for about a third more compute. Router stats come from
        # the first forward only (the recompute's outputs are discarded), and the selection
        # bias moves after backward, so the recompute routes exactly as the forward did.
        self.activation_checkpointing = False

    def forward(self, tokens_BS: torch.Tensor, cache: KVCache | None = None, last: int | None = None) -> Output:
        """Logits of every position (of the ``last`` ones only, if given); with ``cache``, of the positions after
        those it holds, which it then holds too."""
        S = tokens_BS.shape[1]
        if cache is None:
            freqs = rope_frequencies(self.config, S, tokens_BS.device)
        else:
            freqs = cache.freqs_LDh2[cache.length : cache.length + S]
        h = self.tok_embeddings(tokens_BS)
        stats = []
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.layers:
            if recompute:
                h, layer_stats = checkpoint(block, h, freqs, use_reentrant=False)
            else:
                h, layer_stats = block(h, freqs, cache)
            if layer_stats is not None:
                stats.append(layer_stats)
        if cache is not None:
            cache.length += S
        if last is not None:
            if not 0 < last <= S:
                raise ValueError(f"last ({last}) must be between 1 and the {S} positions run")
            h = h[:, S - last :]
        return Output(self.output(self.norm(h)), stats)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None,
                     width_mult: float = 1.0) -> None:
        """Normal init; with ``width_mult`` > 1, µP scaling (see :func:`param_group`)."""
        for name, param in self.named_parameters():
            group = param_group(name)
            if group == "norms":
                param.fill_(1.0)
            elif group == "embedding":
                param.normal_(0.0, std, generator=generator)
            elif group == "output":
                param.normal_(0.0, std / width_mult, generator=generator)
            else:
                param.normal_(0.0, std / width_mult**0.5, generator=generator)

    def num_params(self, active: bool = False) -> int:
        """All parameters, or those one token uses (top_k of E routed experts per MoE layer)."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        idle = 0
        for block in self.layers:
            if block.moe is not None:
                per_expert = sum(p[0].numel() for p in block.moe.experts.parameters())
                idle += per_expert * (block.moe.n_experts - block.moe.top_k)
        return total - idle
