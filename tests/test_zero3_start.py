"""A real 2-rank ZeRO-3 start on the CPU (gloo): each rank materialises only its partition of the weights,
and those partitions gather to the weights a single process initialises, bit for bit.

How the host memory is measured: each rank imports everything and joins the process group first
(torch, DeepSpeed and gloo dwarf a model this size), then resets its peak resident set size
(``5`` to ``/proc/self/clear_refs``) and reads its RSS. ``VmHWM`` after the model is materialised
(``Llama4.materialize`` returns), and again after ``deepspeed.initialize``, less that RSS, is the
growth of the start. The model is nano-shaped but wider (141 MB of fp32 weights in all), so that a
rank's share is tens of MB, well above the allocator's noise; materialising it whole on each rank
(the path before ZeRO-3 partitioned at materialisation) grows a rank by twice its share.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port

pytest.importorskip("deepspeed")

# nano's layout (every layer MoE, QK norm) at 2x its width and 2x its experts: 35.1M parameters.
WIDE_NANO = dict(vocab_size=4096, dim=512, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=64, ffn_dim=512,
                 n_experts=8, floor_scale=256)
RUN = dict(engine="deepspeed", zero_stage=3, seed=11, seq_len=16, batch_size=2, steps=1)


def _memory() -> dict[str, int]:
    """This process's resident set size now and at its peak, in bytes."""
    status = open("/proc/self/status").read()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def _rank(rank: int, world: int, port: int, expert_parallel: int, report: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import deepspeed

    from herd.model import ModelConfig
    from herd.stages.pretrain import PretrainConfig
    from tasks.model.llama4 import Llama4
    from tasks.training.engine import make_engine
    from tasks.training.loop import new_model
    from tasks.training.optim import param_groups

    deepspeed.init_distributed(dist_backend="gloo")
    with torch.device("meta"):
        Llama4(ModelConfig(**{**WIDE_NANO, "dim": 64}))  # torch's meta kernels load on first use: 70 MB, once
    model_config = ModelConfig(**WIDE_NANO)
    config = PretrainConfig(**RUN, expert_parallel_size=expert_parallel)
    measured: dict[str, int] = {}
    materialize = Llama4.materialize

    def materialize_and_measure(model, *args, **kwargs):  # the end of the model build, inside the engine
        materialize(model, *args, **kwargs)
        measured["built"] = _memory()["VmHWM"]

    Llama4.materialize = materialize_and_measure
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak RSS starts again from the RSS now
    before = _memory()["VmRSS"]
    model = new_model(model_config, config)
    engine = make_engine(model, param_groups(model, config, 1.0), config, lambda step: 1.0)
    started = _memory()["VmHWM"]
    Llama4.materialize = materialize

    gathered = engine._full_state_dict()  # a collective: every rank takes part
    result = {"built": measured["built"] - before, "started": started - before}
    if rank == 0:
        whole = new_model(model_config, config.model_copy(update={"engine": "plain"})).state_dict()
        result["differ"] = [name for name, value in whole.items() if not torch.equal(gathered[name], value)]
        result["names"] = sorted(gathered) == sorted(whole)
    Path(f"{report}-{rank}.json").write_text(json.dumps(result))


@pytest.mark.parametrize("expert_parallel", [1, 2])
def test_a_zero3_rank_materialises_its_share_and_the_shares_are_the_whole_model(tmp_path, expert_parallel):
    from herd.model import ModelConfig
    from tasks.training.deepspeed_presets import estimate, host_bytes

    report = tmp_path / "rank"
    mp.spawn(_rank, args=(2, free_port(), expert_parallel, str(report)), nprocs=2)
    ranks = [json.loads(Path(f"{report}-{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["names"] and ranks[0]["differ"] == []

    config = ModelConfig(**WIDE_NANO)
    share = host_bytes(config, expert_parallel, 2)  # the plan's host bytes of one rank: 70.3 MB
    states = estimate(config, 2, expert_parallel, micro_batch=1, seq_len=16).model_states
    for rank, grown in enumerate(ranks):
        print(f"rank {rank}: materialised +{grown['built'] / 1e6:.1f} MB, started +{grown['started'] / 1e6:.1f} MB; "
              f"share {share / 1e6:.1f} MB, model states {states / 1e6:.1f} MB")
        assert grown["built"] <= 1.5 * share, (rank, grown, share)
        # deepspeed.initialize copies the partitions into one flat buffer and adds the fp32 master copy and the
        # gradient partition: on the CPU these are host memory too. Within the plan's model states (AdamW's
        # moments, counted there, come with the first step) plus the partitions' second copy.
        assert grown["started"] <= 1.5 * (states + share), (rank, grown, states)
