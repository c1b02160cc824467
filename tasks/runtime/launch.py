"""Start a herd command on every rank of this node, torchrun-style: one worker process per GPU.

The topology comes from the environment, so one command line serves a laptop and every pod
of a gang (the Kubernetes backend runs exactly this in each pod of its indexed Job):

    herd launch --nproc 2 -- stage pretrain --variant scout --run r1 --config nano --in tokens=URI
    herd launch --nproc 2 --module tasks.runtime.distcheck      # all_reduce over every rank: a smoke test
    python -m tasks.runtime.launch --nproc 2 -- stage ...        # the same

| setting           | first of                                                  | default                 |
|-------------------|-----------------------------------------------------------|-------------------------|
| nodes             | ``--nnodes``, HERD_NNODES, PET_NNODES                      | 1                       |
| this node's rank  | ``--node-rank``, HERD_NODE_RANK, JOB_COMPLETION_INDEX, PET_NODE_RANK | 0            |
| workers per node  | ``--nproc``, HERD_NPROC_PER_NODE, PET_NPROC_PER_NODE       | visible GPUs, else 1    |
| rendezvous        | MASTER_ADDR, MASTER_PORT                                   | 127.0.0.1, a free port  |

Workers are started by torch's elastic agent (the code behind ``torchrun``) with a static
rendezvous: node ranks are pod indexes, so global rank 0 runs on pod 0, whose stable DNS
name is MASTER_ADDR. Each worker gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT, which is what ``torch.distributed`` and DeepSpeed read.

Exit status: 0 when every worker succeeded; otherwise 2 if any worker refused its config or
input (retrying cannot help), else the first failed worker's code.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from typing import Mapping

from herd.stage import BAD_INPUT_EXIT, SKIP_EXIT


@dataclass(frozen=True)
class Topology:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name, "").strip():
            return env[name].strip()
    return None


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def topology(args: argparse.Namespace, env: Mapping[str, str]) -> Topology:
    nnodes = int(args.nnodes or _first(env, "HERD_NNODES", "PET_NNODES") or 1)
    node_rank = int(args.node_rank if args.node_rank is not None
                    else _first(env, "HERD_NODE_RANK", "JOB_COMPLETION_INDEX", "PET_NODE_RANK") or 0)
    nproc = int(args.nproc or _first(env, "HERD_NPROC_PER_NODE", "PET_NPROC_PER_NODE") or _visible_gpus() or 1)
    if nnodes < 1 or nproc < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"bad topology: node rank {node_rank} of {nnodes} nodes, {nproc} workers per node")
    addr = _first(env, "MASTER_ADDR") or "127.0.0.1"
    port = _first(env, "MASTER_PORT")
    if port is None and nnodes > 1:
        raise ValueError("MASTER_PORT must be set when a command spans nodes (every node must agree on it)")
    return Topology(nnodes, node_rank, nproc, addr, int(port) if port else _free_port())


def torchrun_arguments(topo: Topology, module: str, command: list[str]) -> list[str]:
    """``torchrun`` arguments for this node. No in-node restarts: the gang is restarted whole, from a checkpoint."""
    return [
        f"--nnodes={topo.nnodes}",
        f"--node-rank={topo.node_rank}",
        f"--nproc-per-node={topo.nproc_per_node}",
        "--rdzv-backend=static",
        f"--master-addr={topo.master_addr}",
        f"--master-port={topo.master_port}",
        "--max-restarts=0",
        "--monitor-interval=1",
        # `--` ends torchrun's own options: its parser would read the command's `--run` as its `--run-path`.
        "-m", module, "--", *command,
    ]


def _exit_code(codes: list[int]) -> int:
    if BAD_INPUT_EXIT in codes:
        return BAD_INPUT_EXIT
    if codes and set(codes) == {SKIP_EXIT}:  # every rank found the stage not needed
        return SKIP_EXIT
    first = codes[0] if codes else 1
    return 128 - first if first < 0 else first or 1  # a signal -N becomes 128+N, as a shell reports it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herd launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nnodes", type=int, default=None)
    parser.add_argument("--node-rank", type=int, default=None)
    parser.add_argument("--nproc", type=int, default=None, help="workers on this node (default: one per GPU)")
    parser.add_argument("--module", default="tasks.cli", help="what each worker runs: python -m MODULE COMMAND...")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the arguments of MODULE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        topo = topology(args, os.environ)
    except ValueError as err:
        print(f"herd launch: error: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    print(f"herd launch: node {topo.node_rank}/{topo.nnodes}, {topo.nproc_per_node} workers, world size "
          f"{topo.world_size}, rendezvous {topo.master_addr}:{topo.master_port}: {args.module} {' '.join(command)}",
          file=sys.stderr, flush=True)
    try:
        torchrun.run(torchrun.parse_args(torchrun_arguments(topo, args.module, command)))
    except ChildFailedError as err:
        failures = sorted(err.failures.values(), key=lambda failure: failure.timestamp)
        return _exit_code([failure.exitcode for failure in failures])
    return 0


if __name__ == "__main__":
    sys.exit(main())
