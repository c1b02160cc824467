"""A gang smoke test: every rank all-reduces its rank over the real backend (NCCL on GPUs, gloo on CPUs).

    herd launch --nproc 2 --module tasks.runtime.distcheck              # two ranks on this machine
    herd launch --module tasks.runtime.distcheck -- --output check://x  # in every pod of a gang

Each rank prints one line; the sum must be ``world * (world - 1) / 2`` or the rank exits 1.
``--output URI`` makes rank 0 print the stage contract's output line, so an operator that
reads outputs from logs can be checked with it; ``--fail-rank R --exit-code C`` makes rank R
exit with C after the collective, to drill how a gang reacts to one failed worker.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from herd.stage import OUTPUT_LINE_PREFIX


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.runtime.distcheck")
    parser.add_argument("--output", default="", help="rank 0 prints HERD_OUTPUT=URI")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--exit-code", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend)
    try:
        value = torch.tensor([float(rank)], device=device)
        dist.all_reduce(value)
        total, expected = value.item(), world * (world - 1) / 2
    finally:
        dist.destroy_process_group()
    ok = total == expected
    print(f"distcheck rank {rank}/{world} local {local_rank} on {socket.gethostname()} ({backend}): "
          f"all_reduce {total:g}, expected {expected:g}: {'ok' if ok else 'WRONG'}", flush=True)
    if rank == args.fail_rank:
        print(f"distcheck rank {rank}: failing on purpose with exit code {args.exit_code}", flush=True)
        return args.exit_code
    if rank == 0 and args.output and ok:
        print(f"{OUTPUT_LINE_PREFIX}{args.output}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
