"""Training throughput and peak memory: herd's Llama 4 vs ``transformers.Llama4ForCausalLM``, same shape.

    .venv/bin/python bench/model_throughput.py                  # 4, 16, 128 experts x seq 256, 1024
    .venv/bin/python bench/model_throughput.py --experts 16 --seq 256 --steps 3

Each measurement runs in a fresh process (so its peak RSS is its own), and the two
implementations alternate within one run, so machine noise hits both alike. A step is
forward + backward + AdamW on one batch; the first step is a warm-up and is not timed.
The baseline is transformers (eager attention, its default dense expert computation).
Numbers are for the machine that ran them, in that run only.

Steps are timed in wall seconds and in the process's CPU seconds, the steadier figure on a
shared machine (``cpu s-up`` is the speed-up in those). MFU is the model's training FLOPs per
token (6 x active matmul parameters plus attention, ``tasks/training/flops.py``) times tokens
per CPU second, over the best fp32 matmul FLOPs per CPU second measured in the same process
right after its steps. transformers is given the same model FLOPs, so its MFU counts the
routed work it does for nothing (every expert on every token) as waste.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPE = dict(vocab_size=8300, dim=256, n_layers=8, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=512,
             dense_ffn_dim=1024, moe_every=2, use_qk_norm=True, chunk_size=256)


def child(implementation: str, experts: int, seq: int, batch: int, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from herd.model import ModelConfig
    from tasks.model.hf import hf_config
    from tasks.model.llama4 import Llama4
    from tasks.training.flops import measured_matmul_peak, training_flops_per_token

    torch.manual_seed(0)
    config = ModelConfig(**SHAPE, n_experts=experts, max_seq_len=seq)
    if implementation == "herd":
        model = Llama4(config)
        model.init_weights()
        forward = lambda tokens: model(tokens).logits  # noqa: E731
    else:
        from transformers import Llama4ForCausalLM, Llama4TextConfig

        raw = {k: v for k, v in hf_config(config).items() if k not in {"architectures", "model_type", "herd_model_config"}}
        model = Llama4ForCausalLM(Llama4TextConfig(**raw, attn_implementation="eager"))
        forward = lambda tokens: model(tokens).logits  # noqa: E731
    # Fused AdamW for both: the per-parameter loop of the default CPU AdamW is memory-bound work
    # that is the same for both models and would only dilute the comparison of the models.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1))

    def step() -> None:
        logits = forward(tokens[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the peak's matrices
    cpu_peak = measured_matmul_peak(clock=time.process_time)
    flops_per_token = training_flops_per_token(config, Llama4(config).num_params(active=True), seq)
    tokens_per_cpu_second = batch * seq * steps / cpu_seconds
    return {
        "implementation": implementation, "experts": experts, "seq": seq, "batch": batch,
        "threads": torch.get_num_threads(), "tokens_per_second": batch * seq * steps / seconds,
        "tokens_per_cpu_second": tokens_per_cpu_second, "matmul_peak_flops_per_cpu_second": cpu_peak,
        "mfu": tokens_per_cpu_second * flops_per_token / cpu_peak, "peak_rss_mb": peak_rss_mb,
    }


def measure(implementation: str, experts: int, seq: int, batch: int, steps: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", implementation, "--experts", str(experts), "--seq", str(seq),
         "--batch", str(batch), "--steps", str(steps)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["herd", "transformers"])
    parser.add_argument("--experts", type=int, nargs="*", default=[4, 16, 128])
    parser.add_argument("--seq", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "model_throughput.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.experts[0], args.seq[0], args.batch, args.steps)))
        return
    rows = []
    print(f"{'experts':>7} {'seq':>5} {'herd tok/s':>11} {'hf tok/s':>9} {'speed-up':>8} {'cpu s-up':>8} "
          f"{'herd MFU':>8} {'hf MFU':>7} {'peak GF/s':>9} {'herd MB':>8} {'hf MB':>7} {'mem ratio':>9}")
    for experts in args.experts:
        for seq in args.seq:
            runs = {"herd": [], "transformers": []}
            for _ in range(args.repeats):
                for implementation in ("herd", "transformers"):
                    runs[implementation].append(measure(implementation, experts, seq, args.batch, args.steps))
            ours = max(r["tokens_per_second"] for r in runs["herd"])
            theirs = max(r["tokens_per_second"] for r in runs["transformers"])
            cpu_speedup = (max(r["tokens_per_cpu_second"] for r in runs["herd"])
                           / max(r["tokens_per_cpu_second"] for r in runs["transformers"]))
            our_mfu = max(r["mfu"] for r in runs["herd"])
            their_mfu = max(r["mfu"] for r in runs["transformers"])
            peak = max(r["matmul_peak_flops_per_cpu_second"] for r in runs["herd"] + runs["transformers"])
            our_mb = min(r["peak_rss_mb"] for r in runs["herd"])
            their_mb = min(r["peak_rss_mb"] for r in runs["transformers"])
            row = {"experts": experts, "seq": seq, "batch": args.batch, "herd_tokens_per_second": ours,
                   "transformers_tokens_per_second": theirs, "speedup": ours / theirs, "cpu_speedup": cpu_speedup,
                   "herd_mfu": our_mfu, "transformers_mfu": their_mfu, "matmul_peak_flops_per_cpu_second": peak,
                   "threads": runs["herd"][0]["threads"],
                   "herd_peak_rss_mb": our_mb, "transformers_peak_rss_mb": their_mb, "memory_ratio": their_mb / our_mb}
            rows.append(row)
            print(f"{experts:>7} {seq:>5} {ours:>11.0f} {theirs:>9.0f} {ours / theirs:>7.2f}x {cpu_speedup:>7.2f}x "
                  f"{our_mfu:>8.1%} {their_mfu:>7.1%} {peak / 1e9:>9.1f} "
                  f"{our_mb:>8.0f} {their_mb:>7.0f} {their_mb / our_mb:>8.2f}x", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"shape": SHAPE, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
