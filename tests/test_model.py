"""The Llama 4 model: published sizes, the same logits as transformers, sparse experts, chunked attention."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import herd

from pydantic import ValidationError

from herd.model import ModelConfig, RopeScaling, model_preset, nano, nano_maverick
from tasks.model import hf
from tasks.model.info import model_info
from tasks.model.llama4 import Experts, Llama4, MoE, chunked_causal_attention


@pytest.mark.parametrize("preset, total, active", [
    ("scout", 109e9, 17e9),      # Llama 4 Scout 17B-16E
    ("maverick", 400e9, 17e9),   # Llama 4 Maverick 17B-128E
    ("behemoth", 2.0e12, 288e9),  # "288B active, 16 experts, nearly 2T total"
])
def test_published_parameter_counts_within_two_percent(preset, total, active):
    info = model_info(model_preset(preset))
    assert abs(info["total_params"] / total - 1) < 0.025
    assert abs(info["active_params"] / active - 1) < 0.02


def test_model_info_cli():
    shown = json.loads(herd("model", "info", "maverick", "--json").stdout)
    assert shown["layers"].count("M") == 24 and shown["layers"][:4] == "DrMr"
    assert shown["config"]["n_experts"] == 128


def _tiny(config, **changes):
    # A chunk shorter than the test sequence and a temperature floor below it, so both matter.
    return config.model_copy(update={"vocab_size": 512, "chunk_size": 16, "floor_scale": 8, **changes})


VARIANTS = {
    "scout-style": _tiny(nano()),
    "maverick-style": _tiny(nano_maverick()),
    "scout-rope-scaling": _tiny(nano(), rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=32)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformers_gives_the_same_logits_on_our_export(variant, tmp_path):
    from transformers import Llama4ForCausalLM

    config = VARIANTS[variant]
    torch.manual_seed(0)
    model = Llama4(config)
    model.init_weights(std=0.05)
    hf.export(model, tmp_path)
    reference = Llama4ForCausalLM.from_pretrained(tmp_path).eval()
    tokens = torch.randint(0, config.vocab_size, (2, 3 * config.chunk_size + 5))
    with torch.no_grad():
        ours, theirs = model(tokens).logits, reference(tokens).logits
    # fp32 on the CPU: the two differ only in summation order (observed ~3e-6 on logits of size ~3).
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    reloaded = hf.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, ours)


def test_experts_see_only_their_tokens_and_match_the_dense_computation():
    torch.manual_seed(1)
    config = nano().model_copy(update={"n_experts": 8, "top_k": 2})
    moe = MoE(config)
    for param in moe.parameters():
        torch.nn.init.normal_(param, std=0.1)
    x = torch.randn(3, 20, config.dim)
    rows_seen = []
    moe.experts.register_forward_hook(lambda module, args, out: rows_seen.append(args[0].shape[0]))
    out, stats = moe(x)
    assert rows_seen == [3 * 20 * 2] and int(stats.tokens_per_expert.sum()) == 120

    # Dense reference, as transformers computes it: every expert on every token, score 0 if not chosen.
    x_TD = x.reshape(-1, config.dim)
    logits = moe.router(x_TD)
    top = torch.topk(logits, 2, dim=-1)
    scores = torch.zeros_like(logits).scatter(1, top.indices, torch.sigmoid(top.values))
    dense = moe.shared(x_TD)
    for e in range(config.n_experts):
        gate, up = ((x_TD * scores[:, e:e + 1]) @ moe.experts.gate_up[e]).chunk(2, dim=-1)
        dense = dense + (F.silu(gate) * up) @ moe.experts.down[e]
    torch.testing.assert_close(out.reshape(-1, config.dim), dense, atol=1e-5, rtol=1e-5)


def _one_matmul_per_expert(gate_up, down, rows_AD, counts: list[int]) -> torch.Tensor:
    outputs = []
    for expert, rows in enumerate(torch.split(rows_AD, counts)):
        gate, up = (rows @ gate_up[expert]).chunk(2, dim=-1)
        outputs.append((F.silu(gate) * up) @ down[expert])
    return torch.cat(outputs)


def test_grouped_experts_equal_one_matmul_per_expert_forward_and_backward():
    torch.manual_seed(6)
    experts = Experts(6, 32, 48)
    for param in experts.parameters():
        torch.nn.init.normal_(param, std=0.1)
    counts = [5, 0, 9, 1, 0, 15]  # two experts get no rows
    rows = torch.randn(30, 32, requires_grad=True)
    grad_out = torch.randn(30, 32)
    out = experts(rows, torch.tensor(counts))
    out.backward(grad_out)

    gate_up, down, ref_rows = (t.detach().clone().requires_grad_() for t in (experts.gate_up, experts.down, rows))
    expected = _one_matmul_per_expert(gate_up, down, ref_rows, counts)
    expected.backward(grad_out)
    # fp32 on the CPU, the same matmul for each expert: observed equal to the bit.
    for ours, theirs in ((out, expected), (rows.grad, ref_rows.grad), (experts.gate_up.grad, gate_up.grad),
                         (experts.down.grad, down.grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert not experts.gate_up.grad[[1, 4]].any() and not experts.down.grad[[1, 4]].any()


def _capped(capacity_factor: float | None, over_capacity: str = "drop") -> MoE:
    torch.manual_seed(7)
    config = nano().model_copy(update={"n_experts": 4, "top_k": 2, "capacity_factor": capacity_factor,
                                       "over_capacity": over_capacity})
    moe = MoE(config)
    for param in moe.parameters():
        torch.nn.init.normal_(param, std=0.1)
    with torch.no_grad():
        moe.router.weight[0] += 0.3  # expert 0 is wanted by more tokens than it may take
    return moe


def test_capacity_drops_the_rows_past_it_in_token_order_and_counts_them():
    moe = _capped(0.5)
    x = torch.randn(2, 16, moe.router.in_features, requires_grad=True)
    out, stats = moe(x)

    # Reference, token by token: an expert takes its first ceil(0.5 * 64 / 4) = 8 rows; a dropped
    # row adds nothing to its token, which keeps its shared expert.
    x_TD = x.reshape(-1, x.shape[-1])
    logits = moe.router(x_TD)
    top = torch.topk(logits, 2, dim=-1)
    expected, taken, dropped = moe.shared(x_TD), [0] * 4, 0
    for t in range(x_TD.shape[0]):
        for k in range(2):
            expert = int(top.indices[t, k])
            if taken[expert] == 8:
                dropped += 1
                continue
            taken[expert] += 1
            gate, up = (x_TD[t] * torch.sigmoid(top.values[t, k]) @ moe.experts.gate_up[expert]).chunk(2, dim=-1)
            expected = expected.index_add(0, torch.tensor([t]), ((F.silu(gate) * up) @ moe.experts.down[expert])[None])
    assert dropped > 0 and int(stats.over_capacity) == dropped
    assert int(stats.tokens_per_expert.sum()) == 64  # the load the router asked for, capacity aside
    torch.testing.assert_close(out.reshape(-1, x.shape[-1]), expected, atol=1e-5, rtol=1e-5)

    grad_out = torch.randn_like(expected)
    ours = torch.autograd.grad(out.reshape_as(expected), [x, *moe.parameters()], grad_out)
    theirs = torch.autograd.grad(expected, [x, *moe.parameters()], grad_out)
    # The router's gradient sums 32 tokens' terms in another order: observed at most 2.2e-5 apart.
    for name, a, b in zip(["x", *(n for n, _ in moe.named_parameters())], ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_capacity_kept_or_out_of_training_changes_nothing_but_the_count():
    x = torch.randn(2, 16, nano().dim)
    free, _ = _capped(None)(x)
    kept, kept_stats = _capped(0.5, "keep")(x)
    dropped, dropped_stats = _capped(0.5)(x)
    assert torch.equal(kept, free) and int(kept_stats.over_capacity) == int(dropped_stats.over_capacity) > 0
    assert not torch.equal(dropped, free)
    evaluating = _capped(0.5).eval()
    served, served_stats = evaluating(x)
    assert torch.equal(served, free) and served_stats.over_capacity is None


def test_capacity_settings_are_checked():
    with pytest.raises(ValidationError, match="capacity_factor"):
        ModelConfig(capacity_factor=0)
    with pytest.raises(ValidationError, match="capacity_factor"):
        ModelConfig(over_capacity="keep")
    with pytest.raises(ValidationError, match="over_capacity"):
        ModelConfig(capacity_factor=1.25, over_capacity="reroute")


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_a_moe_layer_never_reads_a_value_back_to_the_host(capacity_factor):
    # The meta device holds shapes and no values, so .item(), .tolist(), bincount or a boolean
    # mask (each a wait for the GPU, in every MoE layer) fail there. bf16: the grouped matmul's dtype.
    config = nano().model_copy(update={"n_experts": 4, "top_k": 2, "capacity_factor": capacity_factor})
    with torch.device("meta"):
        moe = MoE(config).to(torch.bfloat16)
        x = torch.randn(2, 16, config.dim, dtype=torch.bfloat16, requires_grad=True)
    out, stats = moe(x)
    (out.square().mean() + stats.aux_loss).backward()
    assert moe.experts.gate_up.grad.shape == moe.experts.gate_up.shape


@pytest.mark.parametrize("seq_len", [64, 70])
def test_chunked_attention_equals_the_block_masked_full_attention(seq_len):
    torch.manual_seed(2)
    chunk = 16
    q, k, v = (torch.randn(2, 4, seq_len, 8) for _ in range(3))
    position = torch.arange(seq_len)
    allowed = (position[:, None] >= position[None, :]) & (position[:, None] // chunk == position[None, :] // chunk)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(chunked_causal_attention(q, k, v, chunk), expected, atol=1e-5, rtol=1e-5)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(3)
    config = _tiny(nano())
    model = Llama4(config)
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, config.vocab_size, (4, 33))
    losses = []
    for _ in range(15):
        out = model(tokens[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten()) + 0.01 * out.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_selection_bias_steers_tokens_towards_underloaded_experts():
    torch.manual_seed(4)
    config = nano().model_copy(update={"n_experts": 4})
    moe = MoE(config)
    for param in moe.parameters():
        torch.nn.init.normal_(param, std=0.1)
    with torch.no_grad():
        moe.router.weight[0] += 0.5  # expert 0 wins most tokens
    x = torch.randn(4, 64, config.dim)
    _, before = moe(x)
    for _ in range(200):
        _, stats = moe(x)
        moe.update_selection_bias(stats.tokens_per_expert, rate=0.01)
    _, after = moe(x)
    assert moe.selection_bias[0] < 0 < moe.selection_bias[1:].max()
    assert after.tokens_per_expert.float().std() < 0.5 * before.tokens_per_expert.float().std()


# Top-2 under a capacity that drops rows: the recompute must drop the same ones.
CHECKPOINTED = {**VARIANTS, "scout-capacity": _tiny(nano(), top_k=2, capacity_factor=0.75)}


@pytest.mark.parametrize("variant", ["scout-style", "maverick-style", "scout-capacity"])
def test_activation_checkpointing_recomputes_blocks_to_the_same_loss_gradients_and_expert_load(variant):
    torch.manual_seed(5)
    plain = Llama4(CHECKPOINTED[variant])
    plain.init_weights(std=0.05)
    with torch.no_grad():  # a trained bias, so the recompute must route with it as the forward did
        for block in plain.layers:
            if block.moe is not None:
                block.moe.selection_bias.normal_(0.0, 0.5)
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing = True
    tokens = torch.randint(0, plain.config.vocab_size, (2, 41))
    runs, block_calls = [], []
    for model in (plain, checkpointed):
        calls: list[int] = []
        model.layers[0].register_forward_pre_hook(lambda *args, calls=calls: calls.append(1))
        out = model(tokens[:, :-1])
        loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten()) + 0.01 * out.aux_loss
        loss.backward()
        for block, stats in zip((b for b in model.layers if b.moe is not None), out.router):
            block.moe.update_selection_bias(stats.tokens_per_expert, rate=0.1)  # the loop's bias step
        runs.append((loss, out.router, model))
        block_calls.append(len(calls))
    assert block_calls == [1, 2]  # the checkpointed block ran again in backward
    (loss, router, _), (ckpt_loss, ckpt_router, _) = runs
    # fp32 on the CPU, the same kernels on the same inputs: equal to the bit, no tolerance needed.
    assert torch.equal(ckpt_loss, loss)
    assert len(ckpt_router) == len(router) == sum(b.moe is not None for b in plain.layers)
    for ours, theirs in zip(ckpt_router, router):  # each token counted once: the recompute reports nothing
        assert torch.equal(ours.tokens_per_expert, theirs.tokens_per_expert)
        assert int(ours.tokens_per_expert.sum()) == tokens[:, :-1].numel() * plain.config.top_k
        if plain.config.capacity_factor is not None:
            assert int(ours.over_capacity) == int(theirs.over_capacity) > 0
    expected = dict(plain.named_parameters())
    for name, param in checkpointed.named_parameters():
        assert torch.equal(param.grad, expected[name].grad), name
    for name, buffer in plain.named_buffers():  # the bias moved once, by the same step
        assert torch.equal(checkpointed.get_buffer(name), buffer), name
