"""The Llama 4 text decoder, compact and sparse.

Shape legend: B batch, S sequence, D model width, H query heads, K key/value heads,
Dh head width, C attention chunk, N chunks, T tokens (B*S), E experts, F expert width,
A token-to-expert assignments (T*top_k), L positions held in a key/value cache.

What differs from ``transformers.Llama4ForCausalLM`` is only how the same function is
computed: experts run on the tokens routed to them (sorted dispatch, one grouped matmul
over all experts), never on all tokens; RoPE layers attend within chunks by reshaping,
instead of masking a full S*S score matrix. ``tests/test_model.py`` checks the logits
against transformers. An optional expert capacity (``ModelConfig.capacity_factor``) is
herd's own and has no transformers counterpart; it acts in training only.

``model(tokens, cache)`` runs only the positions after those a
:class:`~tasks.model.generate.KVCache` holds, attending to the cached keys through an
explicit causal (and, on RoPE layers, in-chunk) mask; ``tests/test_generate.py`` checks it
against the full forward. ``model(tokens, last=n)`` computes the logits of the last ``n``
positions only: the output head is about a third of a nano forward, and a prompt's prefill,
a needle's answer or a judge's reference answer needs only a few positions' logits.
``model(tokens, where=mask)`` computes them at the positions a (B, S) boolean mask selects,
flattened to (N, V): SFT weighs only the assistant's tokens, so the final norm and the head
(and the loss after them) run on those alone.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
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
    """E SwiGLU experts in two stacked weights, laid out (E, in, out) as transformers stores them.

    Each weight is one grouped matmul over every expert (``torch._grouped_mm``): the rows come
    sorted by expert, and the offsets that end each expert's rows are a cumulative sum on the
    device, so the forward never waits for the host and no expert is padded to another's size.
    On the CPU the grouped matmul is one ``mm`` per expert inside ATen, equal to the bit to a
    Python loop of them (``tests/test_model.py``); on a GPU it is one kernel, in bf16.
    """

    def __init__(self, n_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Parameter(torch.empty(n_experts, dim, 2 * hidden))  # [gate | up]
        self.down = nn.Parameter(torch.empty(n_experts, hidden, dim))
        # Rows per expert a multiple of this: FP8's grouped GEMM takes only groups of 16 rows
        # (precision.convert_to_fp8 sets it); 1 runs the rows as they come.
        self.row_alignment = 1

    def forward(self, routed_in_AD: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
        """``routed_in_AD`` is sorted by expert; expert e takes the next ``tokens_per_expert_E[e]`` rows.

        Rows after the last expert's belong to none: their output is undefined, and the
        caller masks them (:class:`MoE` does, for tokens over capacity).
        """
        if self.row_alignment > 1:
            return self._aligned(routed_in_AD, tokens_per_expert_E)
        offsets_E = tokens_per_expert_E.cumsum(0).to(torch.int32)
        gate_AF, up_AF = grouped_mm(routed_in_AD, self.gate_up, offsets_E).chunk(2, dim=-1)
        return grouped_mm(F.silu(gate_AF) * up_AF, self.down, offsets_E)

    def _aligned(self, routed_in_AD: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
        """The same, with each expert's rows padded by zero rows to a multiple of ``row_alignment``.

        The padded block has a size known without the counts (every group, and the rows that
        belong to none, short of a multiple by at most ``row_alignment - 1``), so nothing is
        read back to the host; each row's place in it is a cumulative sum on the device.
        """
        align, (rows, dim), n_experts = self.row_alignment, routed_in_AD.shape, tokens_per_expert_E.shape[0]
        device = routed_in_AD.device
        counts_G = torch.cat([tokens_per_expert_E, (rows - tokens_per_expert_E.sum()).reshape(1)])  # + the rest
        padded_G = (counts_G + align - 1) // align * align
        group_A = torch.repeat_interleave(torch.arange(n_experts + 1, device=device), counts_G, output_size=rows)
        slot_A = torch.arange(rows, device=device) - (counts_G.cumsum(0) - counts_G)[group_A]
        place_A = (padded_G.cumsum(0) - padded_G)[group_A] + slot_A
        capacity = -(-(rows + (n_experts + 1) * (align - 1)) // align) * align
        padded_PD = routed_in_AD.new_zeros(capacity, dim).index_copy(0, place_A, routed_in_AD)
        offsets_E = padded_G[:n_experts].cumsum(0).to(torch.int32)
        gate_PF, up_PF = grouped_mm(padded_PD, self.gate_up, offsets_E).chunk(2, dim=-1)
        return grouped_mm(F.silu(gate_PF) * up_PF, self.down, offsets_E)[place_A]


def grouped_mm(x_AK: torch.Tensor, w_EKN: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """Rows ``offsets_E[e-1]:offsets_E[e]`` of ``x_AK`` times ``w_EKN[e]``, for every expert at once.

    Autocast does not reach ``torch._grouped_mm``, so its dtype is applied here: bf16 under a
    bf16 autocast, which is also the dtype of the GPU's grouped kernel (and of FP8 training's
    torchao kernel, which takes over this call for weights converted to its tensor subclass).
    """
    device = x_AK.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x_AK, w_EKN = x_AK.to(dtype), w_EKN.to(dtype)
    return torch._grouped_mm(x_AK, w_EKN, offs=offsets_E)


@dataclass
class RouterStats:
    """What training needs from a MoE layer besides its output: the balance loss and the load."""

    aux_loss: torch.Tensor
    tokens_per_expert: torch.Tensor  # (E,), the rows the router chose for each expert, capacity aside
    over_capacity: torch.Tensor | None = None  # (), rows past their expert's capacity; None without one


class MoE(nn.Module):
    """Sigmoid top-k router whose score scales the expert *input*, plus an always-on shared expert.

    With ``capacity_factor`` set, each expert takes at most ``ceil(factor * rows / E)`` rows of a
    training batch, its tokens in batch order; the rows past that are counted and, unless
    ``over_capacity`` is ``keep``, dropped: their token keeps its shared expert and residual.
    Evaluation and generation keep every row, as a served model does.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.n_experts = config.n_experts
        self.capacity_factor = config.capacity_factor
        self.drops = config.over_capacity == "drop"
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
        # scatter_add, not bincount: bincount reads its largest value back to size its output.
        counts_E = expert_A.new_zeros(self.n_experts).scatter_add_(0, expert_A, torch.ones_like(expert_A))
        routed_E, over, kept_A1 = counts_E, None, None
        if self.capacity_factor is not None and self.training:
            order_A, routed_E, over, kept_A1 = self._within_capacity(expert_A, order_A, counts_E)
        token_A = order_A // self.top_k
        routed_in_AD = x_TD[token_A] * scores_TK.reshape(-1)[order_A, None]
        if kept_A1 is not None:  # the dropped rows come last and belong to no expert: nothing flows through them
            routed_in_AD = torch.where(kept_A1, routed_in_AD, 0.0)
        routed_out_AD = self.experts(routed_in_AD, routed_E)
        if kept_A1 is not None:
            routed_out_AD = torch.where(kept_A1, routed_out_AD, 0.0)
        out_TD = self.shared(x_TD).index_add(0, token_A, routed_out_AD)

        # Switch-style balance loss on normalised sigmoid scores: E * sum_e(load_e * mean_prob_e).
        probs_TE = torch.sigmoid(logits_TE.float())
        probs_TE = probs_TE / probs_TE.sum(-1, keepdim=True)
        load_E = counts_E.float() / expert_A.numel()
        aux = self.n_experts * (load_E * probs_TE.mean(0)).sum()
        return out_TD.view_as(x_BSD), RouterStats(aux, counts_E, over)

    def _within_capacity(self, expert_A: torch.Tensor, order_A: torch.Tensor, counts_E: torch.Tensor):
        """The routing under each expert's capacity, computed on the device: (order, rows per expert, rows over, kept).

        Dropping, the rows over capacity move after every kept row (a stable sort keeps the
        rest by expert) and ``kept_A1`` marks the rows before them; keeping, only the count changes.
        """
        rows = expert_A.numel()
        capacity = math.ceil(self.capacity_factor * rows / self.n_experts)
        first_E = counts_E.cumsum(0) - counts_E
        slot_A = torch.arange(rows, device=expert_A.device) - first_E[expert_A[order_A]]
        over_A = slot_A >= capacity
        over = over_A.sum()
        if not self.drops:
            return order_A, counts_E, over, None
        routed_E = counts_E.clamp(max=capacity)
        kept_A1 = (torch.arange(rows, device=expert_A.device) < routed_E.sum())[:, None]
        return order_A[torch.argsort(over_A.byte(), stable=True)], routed_E, over, kept_A1


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


@dataclass(frozen=True)
class InitRecipe:
    """How a model's weights are drawn: kept so a model built on the meta device can be initialised later."""

    std: float
    seed: int
    width_mult: float | Mapping[str, float]


def _init_parameter(param: torch.Tensor, name: str, expert: int | None, recipe: InitRecipe) -> None:
    group = param_group(name)
    if group == "norms":
        param.fill_(1.0)
        return
    key = f"{name}#{expert}" if expert is not None else name
    generator = torch.Generator(device=param.device).manual_seed((recipe.seed * 1_000_003 + zlib.crc32(key.encode()))
                                                                  % 2**63)
    mult = group_mult(recipe.width_mult, group)
    scale = {"embedding": 1.0, "output": 1 / mult}.get(group, 1 / mult**0.5)
    param.normal_(0.0, recipe.std * scale, generator=generator)


@dataclass
class Output:
    logits: torch.Tensor  # (B, S, V); (B, last, V) for the last positions only; (N, V) at the N positions of ``where``
    router: list[RouterStats]  # one per MoE layer
    where: torch.Tensor | None = None  # (B, S) the positions ``logits`` are of, when the forward was given them

    @property
    def aux_loss(self) -> torch.Tensor:
        return torch.stack([r.aux_loss for r in self.router]).mean() if self.router else self.logits.new_zeros(())


def param_group(name: str) -> str:
    """The µP role of a parameter: ``embedding``, ``output``, ``norms``, or a hidden matrix by its fan-in.

    Hidden matrices (inside blocks) go by what their fan-in is the width of: ``hidden`` the
    model width D (``wq``/``wk``/``wv``, ``w1``/``w3``, router, expert ``gate_up``),
    ``hidden_attention`` H*Dh (``wo``), ``hidden_ffn`` F (expert ``down``, shared ``w2``),
    ``hidden_dense_ffn`` the dense FFN width (``w2`` of dense layers).

    Under µP with Adam (Tensor Programs V), as a hidden matrix's fan-in grows by m relative
    to the tuned base's, its init std shrinks by sqrt(m) and its LR by m; the output layer
    (fan-in D) gets init std / m and LR / m; embeddings and norms stay as tuned: so one LR
    tuned on a narrow proxy transfers to the wide model. That is herd's stand-in for MetaP,
    whose formulas are unpublished.
    """
    if name.startswith("tok_embeddings"):
        return "embedding"
    if name.startswith("output"):
        return "output"
    if "norm" in name:
        return "norms"
    if name.endswith("attention.wo.weight"):
        return "hidden_attention"
    if name.endswith(("experts.down", "shared.w2.weight")):
        return "hidden_ffn"
    if name.endswith("feed_forward.w2.weight"):
        return "hidden_dense_ffn"
    return "hidden"


def group_mult(width_mult: float | Mapping[str, float], group: str) -> float:
    """The µP multiplier of ``group``: one for every group (a uniformly widened model), or each group's own."""
    if isinstance(width_mult, Mapping):
        return width_mult.get(group, 1.0)
    return 1.0 if group in ("embedding", "norms") else width_mult


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

    def forward(self, tokens_BS: torch.Tensor, cache: KVCache | None = None, last: int | None = None,
                where: torch.Tensor | None = None, resume: tuple[int, torch.Tensor] | None = None) -> Output:
        """Logits of every position (of the ``last`` ones only, or of those the (B, S) boolean ``where`` selects, in
        row-major order, if given); with ``cache``, of the positions after those it holds, which it then holds too.

        ``resume=(n, h)`` starts at block ``n`` from ``h = self.hidden(tokens, n)``, computed once for models
        that share their first ``n`` blocks (the router stats are then of the blocks run here only).
        """
        if last is not None and where is not None:
            raise ValueError("give last or where, not both")
        if resume is not None and cache is not None:
            raise ValueError("resume runs without a cache")
        S = tokens_BS.shape[1]
        if cache is None:
            freqs = rope_frequencies(self.config, S, tokens_BS.device)
        else:
            freqs = cache.freqs_LDh2[cache.length : cache.length + S]
        first, h = (0, self.tok_embeddings(tokens_BS)) if resume is None else resume
        stats = []
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.layers[first:]:
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
        if where is not None:
            if where.shape != tokens_BS.shape or where.dtype != torch.bool:
                raise ValueError(f"where must be a boolean mask of the {tuple(tokens_BS.shape)} positions run")
            h = h[where]
        return Output(self.output(self.norm(h)), stats, where)

    def hidden(self, tokens_BS: torch.Tensor, blocks: int) -> torch.Tensor:
        """The input of block ``blocks`` (the output of the blocks before it), for ``forward(..., resume=)``."""
        freqs = rope_frequencies(self.config, tokens_BS.shape[1], tokens_BS.device)
        h = self.tok_embeddings(tokens_BS)
        for block in self.layers[:blocks]:
            h, _ = block(h, freqs)
        return h

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None,
                     width_mult: float | Mapping[str, float] = 1.0) -> None:
        """Normal init; with ``width_mult`` (see :func:`group_mult`) above 1, µP scaling (see :func:`param_group`).

        Every parameter draws from its own stream, seeded by ``generator``'s seed and the
        parameter's name, and every routed expert by its index too: so a rank that holds a
        few experts initialises only those, to the values the whole model would hold. On the
        meta device nothing is drawn; the recipe is kept for :meth:`materialize`.
        """
        seed = generator.initial_seed() if generator is not None else torch.initial_seed()
        self.init_recipe = InitRecipe(std, seed, width_mult)
        if any(param.is_meta for param in self.parameters()):
            return
        for prefix, module in self.named_modules():
            self._init_own(prefix, module)

    @torch.no_grad()
    def _init_own(self, prefix: str, module: nn.Module) -> None:
        """Initialise ``module``'s own parameters and buffers (not its children's) by :attr:`init_recipe`."""
        first_expert = getattr(module, "first_expert", 0) if isinstance(module, Experts) else None
        for leaf, param in module.named_parameters(recurse=False):
            name = f"{prefix}.{leaf}" if prefix else leaf
            if first_expert is None:
                _init_parameter(param, name, None, self.init_recipe)
            else:
                for local, expert_param in enumerate(param.unbind(0)):
                    _init_parameter(expert_param, name, first_expert + local, self.init_recipe)
        if isinstance(module, MoE):
            module.selection_bias.zero_()

    def materialize(self, device: torch.device | str = "cpu",
                    then: Callable[[nn.Module], object] | None = None) -> None:
        """Allocate what this model holds, built on the meta device until now, and initialise it as
        :meth:`init_weights` was asked to: only this rank's experts once they are sharded.

        One module at a time, children before their parent: each module's own parameters are
        allocated, initialised, and handed to ``then`` (ZeRO-3 keeps this rank's partition of
        them and frees the rest) before the next module's exist. So with ``then`` partitioning,
        the host holds its partitions plus one module's own parameters whole, never the model.
        """
        modules = list(self.named_modules())
        for prefix, module in reversed(modules):  # reversed pre-order: every module after its children
            module.to_empty(device=device, recurse=False)
            self._init_own(prefix, module)
            if then is not None:
                then(module)

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
