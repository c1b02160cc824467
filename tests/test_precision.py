"""FP8 on the CPU: which layers the conversion turns to FP8, and torchao's emulated float8 numerics.

The FP8 kernels themselves (float8 matmuls, the routed experts' FP8 grouped GEMM) run only on
a Hopper GPU: ``tests/test_gpu.py`` trains with them there.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from herd.model import nano
from tasks.model.llama4 import Llama4
from tasks.training.precision import convert_from_fp8, convert_to_fp8, fp8_plan

pytest.importorskip("torchao")


def nano_model(seed: int = 0, **shape) -> Llama4:
    model = Llama4(nano().model_copy(update={"vocab_size": 512, **shape}))
    model.init_weights(generator=torch.Generator().manual_seed(seed))
    return model


def test_the_plan_converts_attention_shared_and_routed_experts_and_keeps_router_and_head():
    model = nano_model()
    plan = fp8_plan(model)
    n_layers = model.config.n_layers
    attention = {f"layers.{i}.attention.{w}" for i in range(n_layers) for w in ("wq", "wk", "wv", "wo")}
    shared = {f"layers.{i}.moe.shared.{w}" for i in range(n_layers) for w in ("w1", "w2", "w3")}
    assert set(plan.linears) == attention | shared
    assert plan.experts == [f"layers.{i}.moe.experts" for i in range(n_layers)]
    assert set(plan.kept) == {"output"} | {f"layers.{i}.moe.router" for i in range(n_layers)}
    assert "precision-sensitive" in plan.kept["layers.0.moe.router"]


def test_shapes_the_fp8_kernels_cannot_take_stay_bf16_with_the_reason():
    plan = fp8_plan(nano_model(dim=200, n_heads=4, head_dim=50, ffn_dim=100))
    assert plan.experts == []
    assert "multiple of 16" in plan.kept["layers.0.moe.experts"]
    assert "multiple of 16" in plan.kept["layers.0.attention.wq"]


def test_emulated_fp8_linears_stay_close_to_fp32_and_convert_back_unchanged():
    from torchao.float8.float8_linear import Float8Linear

    model = nano_model()
    reference = copy.deepcopy(model)
    plan = convert_to_fp8(model, emulate=True)
    converted = {name for name, module in model.named_modules() if isinstance(module, Float8Linear)}
    assert converted == set(plan.linears)
    x = torch.randn(128, model.config.dim, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer = [reference.layers[0].attention.wq(x), model.layers[0].attention.wq(x)]
        logits = [reference(tokens).logits, model(tokens).logits]

    def error(exact, fp8):
        return ((fp8 - exact).norm() / exact.norm()).item()

    # e4m3 keeps 3 mantissa bits: one rounding is off by up to 1/16 of a value, ~2.5% rms; a product of two
    # rounded operands ~3.5% (measured 3.7%); 28 such layers in a row compound to ~10% of the logits.
    assert 0.01 < error(*layer) < 0.06
    assert error(*logits) < 0.2
    convert_from_fp8(model)
    assert not any(isinstance(module, Float8Linear) for module in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert list(model.state_dict()) == list(reference.state_dict())


def test_emulated_fp8_training_follows_fp32():
    """Forty AdamW steps on four fixed batches: the emulated FP8 model learns them as far as fp32 does, within 2%."""
    losses = {}
    for emulate in (False, True):
        torch.manual_seed(0)
        model = nano_model()
        if emulate:
            convert_to_fp8(model, emulate=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batches = [torch.randint(0, 512, (4, 65), generator=torch.Generator().manual_seed(i)) for i in range(4)]
        for step in range(40):
            tokens = batches[step % 4]
            loss = F.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses[emulate] = sum(F.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten())
                                  for tokens in batches).item() / len(batches)
    # Both memorise the batches from ln(512) = 6.24 down to ~1.1; FP8's rounding noise slows the last
    # stretch a little (measured: 1.16 against 1.12), so what is compared is how far each got.
    start = torch.log(torch.tensor(512.0)).item()
    learned = {emulate: start - loss for emulate, loss in losses.items()}
    assert learned[False] > 4.0
    assert abs(learned[True] - learned[False]) / learned[False] < 0.02, losses


def test_experts_padded_to_groups_of_16_rows_compute_what_they_compute_unpadded():
    """FP8's grouped GEMM takes groups of whole multiples of 16 rows: the padding must not change a value."""
    from tasks.model.llama4 import Experts

    torch.manual_seed(0)
    experts = Experts(5, 32, 48)
    for param in experts.parameters():
        torch.nn.init.normal_(param, std=0.1)
    counts = torch.tensor([17, 0, 3, 32, 1])  # one expert gets nothing, one exactly two groups
    rows = torch.randn(int(counts.sum()) + 6, 32)  # 6 rows past the last expert's belong to none
    grad = torch.randn(rows.shape[0], 32)
    results = []
    for alignment in (1, 16):
        experts.row_alignment = alignment
        x = rows.clone().requires_grad_()
        out = experts(x, counts)
        kept = int(counts.sum())
        (out[:kept] * grad[:kept]).sum().backward()
        results.append((out[:kept].detach(), x.grad[:kept].clone(), experts.gate_up.grad.clone(),
                        experts.down.grad.clone()))
        experts.zero_grad()
    for plain, padded in zip(*results):
        torch.testing.assert_close(padded, plain, rtol=1e-6, atol=1e-6)


def test_fp8_without_a_hopper_gpu_says_what_to_use_instead():
    if torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        pytest.skip("this machine has an FP8 GPU")
    with pytest.raises(RuntimeError, match="precision=bf16"):
        convert_to_fp8(nano_model())
