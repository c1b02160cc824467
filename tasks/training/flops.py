"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak.

On a GPU the peak is the device's dense bf16 figure; on the CPU it is measured at start-up
as the best fp32 matmul throughput, so MFU says how close training gets to what this
machine's matmul can do.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from herd.model import ModelConfig

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets.
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def training_flops_per_token(config: ModelConfig, active_params: int, seq_len: int) -> float:
    """6 x active matmul parameters (forward + backward) plus attention's score and value matmuls.

    The embedding table is a lookup, not a matmul, so its parameters do not count.
    """
    active_params -= config.vocab_size * config.dim
    attention = 0.0
    for layer in range(config.n_layers):
        span = seq_len if config.is_nope(layer) else min(seq_len, config.chunk_size)
        # QK^T and AV, each 2*span*head_dim per head per token, causal halves it, x3 for backward.
        attention += 3 * 2 * 2 * config.n_heads * config.head_dim * span / 2
    return 6.0 * active_params + attention


def peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BF16_PEAK.items():
            if key in name:
                return value
    return measured_matmul_peak()


def measured_matmul_peak(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5,
                         clock: Callable[[], float] = time.perf_counter) -> float:
    """The best fp32 matmul FLOP/s over a few sizes and repeats (the best, since noise only slows).

    ``clock=time.process_time`` gives FLOPs per CPU second of this process (one thread: the
    core's peak while it ran), steadier than wall time on a machine that other work shares.
    """
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm up the BLAS threads
        for _ in range(repeats):
            start = clock()
            a @ b
            best = max(best, 2 * size**3 / (clock() - start))
    return best
