"""A MoE layer's routed experts, forward + backward: one grouped matmul vs one matmul per expert.

    .venv/bin/python bench/grouped_experts.py                                  # CPU, nano widths
    python bench/grouped_experts.py --device cuda --dim 5120 --hidden 8192 --experts 16 128 --tokens 16384

The grouped path is :class:`tasks.model.llama4.Experts` (``torch._grouped_mm`` over offsets
kept on the device); the per-expert path is what it replaced above 256 rows per expert: the
counts read back to the host (a wait for the device in every MoE layer), then a Python loop
of matmuls. Rows go to experts uniformly at random, top-1. On a GPU both run in bf16 under
<<<<<<< HEAD
autocast, as training does; on the CPU in fp32. Times are the best of ``--repeats`` after a
=======
autocast, as training does, timed in wall seconds; on the CPU in fp32, timed in the process's
CPU seconds (steadier on a shared machine). Times are the best of ``--repeats`` after a
>>>>>>> experts
warm-up, in the same process, alternating, so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tasks.model.llama4 import Experts  # noqa: E402


def per_expert(experts: Experts, rows_AD: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
    gate_up, down = experts.gate_up.unbind(0), experts.down.unbind(0)
    outputs = []
    for e, rows in enumerate(torch.split(rows_AD, tokens_per_expert_E.tolist())):
        gate, up = (rows @ gate_up[e]).chunk(2, dim=-1)
        outputs.append((F.silu(gate) * up) @ down[e])
    return torch.cat(outputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--experts", type=int, nargs="*", default=[16, 128])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

<<<<<<< HEAD
    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    print(f"{'experts':>7} {'tokens':>7} {'grouped ms':>10} {'per-expert ms':>13} {'speed-up':>8} {'grouped TFLOP/s':>15}")
=======
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    print(f"{'experts':>7} {'tokens':>7} {'grouped ms':>10} {'per-expert ms':>13} {'speed-up':>8} {'grouped GFLOP/s':>15}")
>>>>>>> experts
    for n_experts in args.experts:
        torch.manual_seed(0)
        experts = Experts(n_experts, args.dim, args.hidden).to(device)
        for param in experts.parameters():
            torch.nn.init.normal_(param, std=args.dim**-0.5)
        chosen = torch.randint(0, n_experts, (args.tokens,), device=device)
        counts_E = torch.bincount(chosen, minlength=n_experts)
        rows_AD = torch.randn(args.tokens, args.dim, device=device, requires_grad=True)
        grad_AD = torch.randn(args.tokens, args.dim, device=device, dtype=dtype)

        def step(forward) -> None:
            experts.zero_grad(set_to_none=True)
            rows_AD.grad = None
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = forward(experts, rows_AD, counts_E)
            out.backward(grad_AD.to(out.dtype))

        runs = {"grouped": [], "per_expert": []}
        for name, forward in (("grouped", Experts.forward), ("per_expert", per_expert)):
            step(forward)  # warm-up
        for _ in range(args.repeats):
            runs["grouped"].append(timed(lambda: step(Experts.forward)))
            runs["per_expert"].append(timed(lambda: step(per_expert)))
        grouped, looped = min(runs["grouped"]), min(runs["per_expert"])
        flops = 6 * args.tokens * 3 * args.dim * args.hidden
        print(f"{n_experts:>7} {args.tokens:>7} {grouped * 1e3:>10.2f} {looped * 1e3:>13.2f} {looped / grouped:>7.2f}x "
<<<<<<< HEAD
              f"{flops / grouped / 1e12:>15.2f}", flush=True)
=======
              f"{flops / grouped / 1e9:>15.1f}", flush=True)
>>>>>>> experts


if __name__ == "__main__":
    main()
