"""Training speed of ``small`` on one GPU: tokens/s and MFU in bf16 and FP8, against transformers in bf16.

    python bench/gpu_train.py                       # small, seq 4096, batch 4: bf16, fp8, transformers
    python bench/gpu_train.py --preset nano --seq 256 --batch 4 --device cpu --steps 3   # the code path on a CPU

The baseline is herd's own bf16 step, measured in the same run; FP8 (torchao float8
linears) and transformers' ``Llama4ForCausalLM`` (bf16, SDPA attention) print as ratios to
it. Every measurement runs in a fresh process, in turn, after warm-up steps. MFU is
against the device's dense bf16 peak (``tasks/training/flops.py``), for FP8 too, so the
two are comparable. Run on a lent H100; the figures go to docs/measured.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(kind: str, preset: str, seq: int, batch: int, steps: int, device_name: str, profile: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from herd.model import model_preset
    from tasks.model.info import model_info
    from tasks.training.flops import peak_flops, training_flops_per_token

    device = torch.device(device_name)
    config = model_preset(preset).model_copy(update={"max_seq_len": seq})
    torch.manual_seed(0)
    if kind == "transformers":
        from transformers import Llama4ForCausalLM, Llama4TextConfig

        from tasks.model.hf import hf_config

        raw = {k: v for k, v in hf_config(config).items() if k not in {"architectures", "model_type", "herd_model_config"}}
        model = Llama4ForCausalLM(Llama4TextConfig(**raw, attn_implementation="sdpa")).to(device)
        forward = lambda tokens: model(tokens).logits  # noqa: E731
    else:
        from tasks.model.llama4 import Llama4

        model = Llama4(config)
        model.init_weights()
        model.to(device)
        if kind == "fp8":
            from tasks.training.precision import convert_to_fp8

            convert_to_fp8(model)
        forward = lambda tokens: model(tokens).logits  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            logits = forward(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    tokens_per_second = batch * seq * steps / seconds
    top = top_operations(step, sync) if profile else None
    flops = training_flops_per_token(config, model_info(config)["active_params"], seq)
    peak = peak_flops(device)
    return {
        "kind": kind, "preset": preset, "seq": seq, "batch": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tokens_per_second": round(tokens_per_second, 1),
        "mfu": round(tokens_per_second * flops / peak, 4),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        **({"top_operations": top} if top else {}),
    }


def top_operations(step, sync, count: int = 20) -> list[dict]:
    """The operations that took the most device (or CPU) time over two profiled steps: where the step goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch_cuda_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        sync()
    key = "device_time_total" if torch_cuda_available() else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:count]
    return [{"name": e.key[:120], "ms": round(getattr(e, key, 0) / 2000, 3), "calls": e.count // 2} for e in events]


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def measure(kind: str, args: argparse.Namespace) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--preset", args.preset, "--seq", str(args.seq),
         "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
         *(["--profile"] if args.profile and kind == "bf16" else [])],
        capture_output=True, text=True, cwd=REPO,
    )
    if result.returncode != 0:
        return {"kind": kind, "error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", default="")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--kinds", default="bf16,fp8,transformers")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="also list herd bf16's costliest operations per step")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.seq, args.batch, args.steps, args.device, args.profile)))
        return
    results = [measure(kind, args) for kind in args.kinds.split(",")]
    baseline = next((r for r in results if r.get("kind") == "bf16" and "error" not in r), None)
    print(f"{'kind':<14}{'tokens/s':>12}{'MFU':>8}{'vs bf16':>9}{'peak GB':>9}")
    for r in results:
        if "error" in r:
            print(f"{r['kind']:<14} error: {r['error']}")
            continue
        ratio = r["tokens_per_second"] / baseline["tokens_per_second"] if baseline else float("nan")
        print(f"{r['kind']:<14}{r['tokens_per_second']:>12.0f}{r['mfu']:>8.3f}{ratio:>8.2f}x{r['peak_memory_gb'] or 0:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
