"""DeepSpeed plans for `small` and the published presets: DeepSpeed accepts them, they fit an H100."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import herd

from herd.model import model_preset, nano, nano_maverick
from herd.stages.pretrain import PretrainConfig
from tasks.model.info import model_info
from tasks.model.llama4 import Llama4, rope_frequencies
from tasks.training.deepspeed_presets import (
    H100_BYTES,
    RECIPES,
    ZERO3_DEFAULTS,
    block_activation_bytes,
    plan,
)
from tasks.training.engine import deepspeed_config

PRESETS = ["small", "scout", "maverick", "behemoth"]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_plan_is_what_the_engine_runs_splits_experts_evenly_and_fits_an_h100(preset):
    found = plan(preset)
    config = model_preset(preset)
    training = PretrainConfig(**found.training)  # herd's own validation: EP only with DeepSpeed ZeRO-3
    assert (training.engine, training.zero_stage, training.precision) == ("deepspeed", 3, "bf16")
    assert training.activation_checkpointing
    assert deepspeed_config(training, found.world_size, bf16=False) == found.deepspeed  # nothing added on the side
    ep = training.expert_parallel_size
    assert config.n_experts % ep == 0 and found.world_size % ep == 0
    assert found.deepspeed["train_batch_size"] == RECIPES[preset].micro_batch * found.world_size
    assert found.memory.total <= H100_BYTES, found.to_json()["memory_bytes"]
    # ZeRO-3 shards 16 bytes of fp32 weight, gradient and moments per parameter over every GPU.
    assert found.memory.model_states == pytest.approx(16 * model_info(config)["total_params"] / found.world_size)


def test_the_published_presets_need_their_experts_split():
    assert plan("scout").training["expert_parallel_size"] == 8  # inside a node
    assert plan("maverick").training["expert_parallel_size"] == 16  # over two nodes: one does not fit
    everything_everywhere = plan("maverick", expert_parallel=1)  # a whole layer's 128 experts gathered
    assert not everything_everywhere.fits
    assert everything_everywhere.memory.gathered_weights > 60e9
    with pytest.raises(ValueError, match="must divide"):
        plan("scout", nodes=2, expert_parallel=3)


def _parse_with_deepspeed(rank: int, port: int, plans: list[tuple[dict, int]]) -> None:
    """DeepSpeed's own parser, as each plan's data-parallel world would read the config."""
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    class DataParallel:  # the world size DeepSpeed asks its model-parallel unit for
        def __init__(self, size: int) -> None:
            self.size = size

        def get_data_parallel_world_size(self) -> int:
            return self.size

    deepspeed.init_distributed("gloo", auto_mpi_discovery=False, init_method=f"tcp://127.0.0.1:{port}",
                               rank=rank, world_size=1)
    for config, world_size in plans:
        parsed = DeepSpeedConfig(config, mpu=DataParallel(world_size))
        assert parsed.world_size == world_size and parsed.zero_optimization_stage == 3
        assert parsed.train_batch_size == parsed.train_micro_batch_size_per_gpu * world_size
        zero = parsed.zero_config
        assert (zero.max_live_parameters, zero.prefetch_bucket_size, zero.reduce_bucket_size) == tuple(
            ZERO3_DEFAULTS.values())  # what the estimate assumed
        with pytest.raises(AssertionError, match="train_batch_size"):  # it does check the arithmetic
            DeepSpeedConfig({**config, "train_batch_size": config["train_batch_size"] + 1},
                            mpu=DataParallel(world_size))


def test_deepspeed_parses_every_plan_at_its_world_size():
    pytest.importorskip("deepspeed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plans = [(found.deepspeed, found.world_size) for found in map(plan, PRESETS)]
    plans.append((plan("scout", nodes=64).deepspeed, 512))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_parse_with_deepspeed, args=(port, plans), nprocs=1)  # its own process: no process group left here


def _saved_bytes(block, config, batch: int, seq_len: int) -> int:
    x = torch.randn(batch, seq_len, config.dim, requires_grad=True)
    kept: dict[int, int] = {}

    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with (torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
          torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)):
        block(x, rope_frequencies(config, seq_len))
    return sum(size for pointer, size in kept.items() if pointer != x.untyped_storage().data_ptr())


@pytest.mark.parametrize("config", [nano(), nano_maverick()], ids=["scout-style", "maverick-style"])
def test_the_activation_estimate_bounds_what_autograd_keeps(config):
    torch.manual_seed(0)
    model = Llama4(config)
    model.init_weights()
    for layer in range(2):  # a MoE block, and a dense one for Maverick
        block = model.layers[layer]
        # Per token: the difference of two lengths cancels what does not grow with tokens (weight casts).
        measured = (_saved_bytes(block, config, 2, 512) - _saved_bytes(block, config, 2, 256)) / (2 * 256)
        estimated = block_activation_bytes(config, layer)
        assert measured <= estimated <= 2.5 * measured, (layer, measured, estimated)


def test_cli_prints_the_plan():
    shown = json.loads(herd("model", "deepspeed", "scout", "--nodes", "64", "--gpus-per-node", "8", "--json").stdout)
    assert shown["world_size"] == 512 and shown["fits"]
    assert shown["training"]["expert_parallel_size"] == 8 and shown["deepspeed"]["zero_optimization"]["stage"] == 3
    text = herd("model", "deepspeed", "behemoth").stdout
    assert "--set pretrain.expert_parallel_size=8" in text and "fits an 80 GB H100" in text
    refused = herd("model", "deepspeed", "scout", "--expert-parallel", "3", check=False)
    assert refused.returncode == 2 and "must divide" in refused.stderr
