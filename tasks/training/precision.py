"""How a training run computes: the device and autocast dtype, and the FP8 path for Hopper GPUs.

``with placed(model, config):`` runs a model for inference (a judge, an evaluation, a chat
model) the same way: on that device, under that autocast, without gradients.

FP8 is torchao's float8 training on the model's large linear layers: scaled FP8 matmuls
(dynamic per-tensor scales) replace bf16 ones in attention and dense FFNs; the router,
the output head and the stacked expert weights stay in bf16 (the router's small logits
are precision-sensitive, the experts run as grouped matmuls).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from herd.stages.training import TrainingConfig


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


def convert_to_fp8(model: torch.nn.Module) -> torch.nn.Module:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise RuntimeError("precision=fp8 needs an FP8-capable GPU (Hopper, compute capability 8.9+); "
                           "use precision=bf16 or auto")
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError as err:
        raise RuntimeError("precision=fp8 needs torchao (pip install torchao); the trainer image has it") from err

    def wanted(module: torch.nn.Module, name: str) -> bool:
        if not isinstance(module, torch.nn.Linear) or name == "output" or name.endswith("router"):
            return False
        # float8 matmuls need both dimensions divisible by 16.
        return module.in_features % 16 == 0 and module.out_features % 16 == 0

    return convert_to_float8_training(model, module_filter_fn=wanted)
