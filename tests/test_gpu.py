"""GPU-only: bf16 and FP8 (torchao float8) training of the real model on a CUDA device.

Skipped on the CPU; ``bench/gpu_check.py`` runs them on a lent H100/H200 (``pytest -m gpu``).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from herd.model import model_preset, nano
from herd.pipeline import load_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def needs_fp8() -> None:
    pytest.importorskip("torchao")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+ (Hopper)")


class RandomTokens:
    def __init__(self, vocab: int, seq: int, batch: int) -> None:
        self.vocab, self.seq, self.batch = vocab, seq, batch

    def batch(self, step: int):
        from tasks.training.batch import Batch

        generator = torch.Generator().manual_seed(step % 4)  # four batches, seen again and again: learnable
        return Batch(torch.randint(0, self.vocab, (self.batch, self.seq + 1), generator=generator), Counter())


class MarkovTokens:
    """Text from a fixed random chain where each token has four equally likely successors: a language
    whose best loss is ln 4 = 1.39, learnt from fresh batches, so bf16 and FP8 can be compared on it."""

    def __init__(self, vocab: int, seq: int, batch: int, successors: int = 4) -> None:
        self.vocab, self.seq, self.batch_size = vocab, seq, batch
        self.table = torch.randint(0, vocab, (vocab, successors), generator=torch.Generator().manual_seed(0))

    def batch(self, step: int):
        from tasks.training.batch import Batch

        generator = torch.Generator().manual_seed(1000 + step)
        picks = torch.randint(0, self.table.shape[1], (self.batch_size, self.seq + 1), generator=generator)
        tokens = torch.empty(self.batch_size, self.seq + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, self.vocab, (self.batch_size,), generator=generator)
        for position in range(1, self.seq + 1):
            tokens[:, position] = self.table[tokens[:, position - 1], picks[:, position]]
        return Batch(tokens, Counter())


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_training_steps_lower_the_loss(precision, tmp_path):
    if precision == "fp8":
        needs_fp8()
    from tasks.training.loop import new_model, train

    config = load_config("nano", {"pretrain.precision": precision, "pretrain.steps": 30, "pretrain.seq_len": 256,
                                  "pretrain.batch_size": 8, "pretrain.checkpoint_every": 10}).pretrain
    model = new_model(nano().model_copy(update={"vocab_size": 1024, "dim": 256}), config)
    history = train(model, config, RandomTokens(1024, 256, 8), tmp_path, lambda step, metrics: None)
    assert all(torch.isfinite(torch.tensor(history.losses)))
    assert history.losses[-1] < history.losses[0] - 0.5
    # The FP8 run converted back: the checkpoints and the model hold plain tensors under the same names.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000020", "step-00000030"]
    assert all(type(p) is torch.nn.Parameter and type(p.data) is torch.Tensor for p in model.parameters())


def small_shaped(vocab: int = 1024):
    return model_preset("small").model_copy(update={"vocab_size": vocab, "max_seq_len": 512})


def test_fp8_converts_attention_shared_and_routed_experts():
    needs_fp8()
    from torchao.float8.float8_linear import Float8Linear
    from torchao.prototype.moe_training.tensor import Float8TrainingWeightWrapperTensor

    from tasks.model.llama4 import Llama4
    from tasks.training.precision import convert_to_fp8

    model = Llama4(small_shaped()).cuda()
    model.init_weights()
    plan = convert_to_fp8(model)
    assert {n for n, m in model.named_modules() if isinstance(m, Float8Linear)} == set(plan.linears)
    assert len(plan.linears) == 7 * model.config.n_layers and len(plan.experts) == model.config.n_layers
    for name in plan.experts:
        experts = model.get_submodule(name)
        assert all(isinstance(w.data, Float8TrainingWeightWrapperTensor) for w in (experts.gate_up, experts.down))
        assert experts.row_alignment == 16 and experts.gate_up.stride()[1] == 1  # column-major, groups of 16
    tokens = torch.randint(0, 1024, (2, 512), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(tokens)
    out.logits.float().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad
               and p.grad is not None)
    assert model.layers[0].moe.experts.gate_up.grad is not None


def test_fp8_training_stays_within_two_percent_of_bf16(tmp_path):
    """200 steps of the ``small`` shape on a learnable synthetic language, bf16 against FP8."""
    needs_fp8()
    from tasks.training.loop import new_model, train

    final = {}
    for precision in ("bf16", "fp8"):
        config = load_config("nano", {"pretrain.precision": precision, "pretrain.steps": 200,
                                      "pretrain.seq_len": 512, "pretrain.batch_size": 8, "pretrain.lr": 1e-3,
                                      "pretrain.checkpoint_every": 1000}).pretrain
        model = new_model(small_shaped(), config)
        history = train(model, config, MarkovTokens(1024, 512, 8), tmp_path / precision, lambda step, metrics: None)
        final[precision] = sum(history.losses[-20:]) / 20
    assert final["bf16"] < 2.5, final  # it learnt the chain (ln 1024 = 6.9 at the start, ln 4 = 1.39 at best)
    assert abs(final["fp8"] - final["bf16"]) / final["bf16"] < 0.02, final



def test_routed_experts_are_one_bf16_grouped_matmul_equal_to_one_matmul_per_expert():
    import torch.nn.functional as F

    from tasks.model.llama4 import Experts

    torch.manual_seed(0)
    experts = Experts(8, 256, 512).cuda()
    for param in experts.parameters():
        torch.nn.init.normal_(param, std=0.05)
    counts = [40, 0, 13, 77, 1, 0, 120, 5]  # two experts get no rows
    rows = torch.randn(sum(counts), 256, device="cuda", requires_grad=True)
    grad_out = torch.randn(sum(counts), 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = experts(rows, torch.tensor(counts, device="cuda"))
    out.backward(grad_out.to(out.dtype))
    assert out.dtype == torch.bfloat16 and experts.gate_up.grad.dtype == torch.float32

    gate_up, down, ref_rows = (t.detach().clone().requires_grad_() for t in (experts.gate_up, experts.down, rows))
    outputs = []
    for e, part in enumerate(torch.split(ref_rows, counts)):  # fp32, one matmul per expert
        gate, up = (part @ gate_up[e]).chunk(2, dim=-1)
        outputs.append((F.silu(gate) * up) @ down[e])
    expected = torch.cat(outputs)
    expected.backward(grad_out)
    # bf16 operands (8 bits of mantissa), fp32 accumulation: within 1% of the fp32 result's norm.
    for ours, theirs in ((out, expected), (rows.grad, ref_rows.grad), (experts.gate_up.grad, gate_up.grad),
                         (experts.down.grad, down.grad)):
        assert (ours.float() - theirs).norm() < 1e-2 * theirs.norm()
    assert not experts.gate_up.grad[[1, 5]].any() and not experts.down.grad[[1, 5]].any()


@pytest.mark.parametrize("capacity_factor", [None, 0.75])
def test_a_moe_layer_trains_without_waiting_for_the_host(capacity_factor):
    from tasks.model.llama4 import MoE

    torch.manual_seed(0)
    moe = MoE(nano().model_copy(update={"n_experts": 8, "top_k": 2, "capacity_factor": capacity_factor})).cuda()
    for param in moe.parameters():
        torch.nn.init.normal_(param, std=0.05)
    x = torch.randn(4, 128, moe.router.in_features, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a wait for the device raises
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, stats = moe(x)
        (out.float().square().mean() + stats.aux_loss).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x.grad).all() and moe.experts.gate_up.grad.abs().sum() > 0
    if capacity_factor is not None:
        assert int(stats.over_capacity) > 0
