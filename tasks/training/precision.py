"""How a training run computes: the device and autocast dtype, and the FP8 path for Hopper GPUs.

``with placed(model, config):`` runs a model for inference (a judge, an evaluation, a chat
model) the same way: on that device, under that autocast, without gradients.

FP8 is torchao's float8 training: scaled FP8 matmuls (dynamic per-tensor scales) replace
bf16 ones in attention, the shared expert and dense FFNs, and the routed experts (most of a
MoE's FLOPs) run torchao's rowwise-scaled FP8 grouped GEMM; the router and the output head
stay bf16 (the router's small logits pick experts, the head's logits set the loss).
:func:`fp8_plan` says what converts; ``tests/test_precision.py`` checks it and the emulated
numerics on the CPU, ``tests/test_gpu.py`` FP8 training against bf16 on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Experts


def device_and_dtype(config: TrainingConfig) -> tuple[torch.device, torch.dtype]:
    """bf16 autocast on a GPU, fp32 on the CPU, unless the config says otherwise."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.precision in {"fp8", "bf16"} or (config.precision == "auto" and device.type == "cuda"):
        return device, torch.bfloat16
    return device, torch.float32


@contextmanager
def placed(model: torch.nn.Module, config: TrainingConfig) -> Iterator[torch.nn.Module]:
    """``model`` on the training device under its autocast for a while, back on the CPU after."""
    device, dtype = device_and_dtype(config)
    model.to(device)
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            yield model
    finally:
        model.to("cpu")


@dataclass(frozen=True)
class Fp8Plan:
    """What FP8 training converts: linear layers (torchao float8, dynamic scales), the routed experts'
    stacked weights (rowwise-scaled FP8 grouped GEMM), and what stays bf16 with the reason."""

    linears: list[str]
    experts: list[str]
    kept: dict[str, str]


def fp8_plan(model: torch.nn.Module) -> Fp8Plan:
    """Which modules ``convert_to_fp8`` turns to FP8: every linear and expert block whose shapes the
    FP8 kernels take (both matmul dimensions multiples of 16), except the router and the output head."""
    linears, experts, kept = [], [], {}
    for name, module in model.named_modules():
        if isinstance(module, Experts):
            dims = (module.gate_up.shape[1], module.down.shape[1])
            if all(d % 16 == 0 for d in dims):
                experts.append(name)
            else:
                kept[name] = f"expert dims {dims}: each must be a multiple of 16"
        elif isinstance(module, torch.nn.Linear):
            if name == "output":
                kept[name] = "output head: the logits' precision sets the loss"
            elif name.endswith("router"):
                kept[name] = "router: small logits that pick experts are precision-sensitive"
            elif module.in_features % 16 or module.out_features % 16:
                kept[name] = f"shape {module.in_features}x{module.out_features} is not a multiple of 16"
            else:
                linears.append(name)
    return Fp8Plan(linears, experts, kept)


def convert_to_fp8(model: torch.nn.Module, emulate: bool = False) -> Fp8Plan:
    """Convert ``model`` in place as :func:`fp8_plan` says; returns the plan.

    ``emulate`` (CPU, tests) runs torchao's float8 linears in emulation, quantising to
    float8_e4m3 and multiplying in high precision; the routed experts' FP8 grouped GEMM
    has only a GPU kernel, so emulation leaves them bf16.
    """
    if not emulate and (not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9)):
        raise RuntimeError("precision=fp8 needs an FP8-capable GPU (Hopper, compute capability 8.9+); "
                           "use precision=bf16 or auto")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise RuntimeError("precision=fp8 needs torchao (the train extra and the trainer image pin it)") from err
    plan = fp8_plan(model)
    chosen = set(plan.linears)
    convert_to_float8_training(model, config=Float8LinearConfig(emulate=emulate),
                               module_filter_fn=lambda module, name: name in chosen)
    if not emulate:
        from torchao.prototype.moe_training.config import Float8TrainingOpConfig
        from torchao.quantization import quantize_

        for name in plan.experts:
            experts = model.get_submodule(name)
            experts.row_alignment = 16  # the FP8 grouped GEMM's groups are whole multiples of 16 rows
            for weight in (experts.gate_up, experts.down):
                # The FP8 grouped GEMM takes its right operand column-major: the same (E, K, N) weight,
                # stored transposed, so the kernel reads it without a copy every step.
                weight.data = weight.data.transpose(-2, -1).contiguous().transpose(-2, -1)
        # Wraps each expert weight in torchao's tensor subclass, which turns the experts' torch._grouped_mm
        # into a dynamically scaled FP8 one (rowwise scales).
        quantize_(model, Float8TrainingOpConfig(), filter_fn=lambda module, name: name in plan.experts)
    return plan


def convert_from_fp8(model: torch.nn.Module) -> None:
    """Plain ``nn.Linear`` layers and contiguous expert weights again, so checkpoints and exports see bf16/fp32
    tensors under the same names."""
    from torchao.float8.float8_linear import Float8Linear

    for name, module in list(model.named_modules()):
        if isinstance(module, Float8Linear):
            plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                    device=module.weight.device, dtype=module.weight.dtype)
            plain.weight = module.weight
            plain.bias = module.bias
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, plain)
        elif isinstance(module, Experts):
            module.row_alignment = 1
            for key in ("gate_up", "down"):
                weight = getattr(module, key)
                inner = getattr(weight.data, "_data", weight.data)
                setattr(module, key, torch.nn.Parameter(inner.contiguous(), requires_grad=weight.requires_grad))
