"""The published presets start without being materialised: built on the meta device, each rank keeps its
experts and allocates only what it holds; and a sharded model initialises to the whole model's values.

``scout`` and ``maverick`` are sharded here as 8 ranks and as 256 would shard them (a fake process
group stands in for the ranks, and nothing is allocated), and each rank's bytes are checked against
the plan ``herd model deepspeed`` prints.
"""

from __future__ import annotations

import math
import resource

import pytest
import torch
import torch.distributed as dist

from herd.model import model_preset
from tasks.model.llama4 import Experts, Llama4
from tasks.model.parallelize import ShardedExperts, shard_experts
from tasks.training.deepspeed_presets import FP32, plan


@pytest.fixture
def fake_world():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    def start(rank: int, world_size: int) -> None:
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)

    yield start
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("preset", ["scout", "maverick"])
@pytest.mark.parametrize("nodes", [1, 32])  # 8 and 256 ranks
def test_a_rank_of_a_published_preset_holds_what_its_plan_says(preset, nodes, fake_world):
    found = plan(preset, nodes=nodes, gpus_per_node=8)
    ep, world = found.training["expert_parallel_size"], found.world_size
    rank = world - 1  # the last rank: its expert group is the last one
    fake_world(rank, world)
    expert_group = dist.new_group(list(range(rank - rank % ep, rank - rank % ep + ep)))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):
        model = Llama4(model_preset(preset))
    shard_experts(model, expert_group)

    assert all(param.is_meta for param in model.parameters())
    experts = [m for m in model.modules() if isinstance(m, ShardedExperts)]
    assert experts and all(m.local == m.n_experts // ep and m.first_expert == (rank % ep) * m.local for m in experts)
    # ZeRO-3 partitions a dense weight over all ranks, an expert weight over the ranks holding the same experts;
    # the rank materialises its partitions (fp32), and keeps 16 bytes (fp32 weight, gradient, two AdamW
    # moments) per element of them.
    partitions = 0
    for module in model.modules():
        group = world // ep if isinstance(module, ShardedExperts) else world
        partitions += sum(math.ceil(param.numel() / group) for param in module.parameters(recurse=False))
    assert FP32 * partitions == found.host_bytes
    assert 16 * partitions == pytest.approx(found.memory.model_states, rel=1e-4)
    # Nothing was allocated: Scout whole is 431 GB of fp32.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 512 * 1024  # KiB


def test_a_rank_initialises_its_experts_to_what_the_whole_model_holds(fake_world):
    from herd.model import nano

    config = nano().model_copy(update={"vocab_size": 256})
    whole = Llama4(config)
    whole.init_weights(std=0.05, generator=torch.Generator().manual_seed(7), width_mult=2.0)
    fake_world(1, 2)
    with torch.device("meta"):
        shard = Llama4(config)
    shard.init_weights(std=0.05, generator=torch.Generator().manual_seed(7), width_mult=2.0)
    shard_experts(shard, dist.group.WORLD)
    shard.materialize("cpu")
    held = shard.state_dict()
    for name, value in whole.state_dict().items():
        if name.endswith(("experts.gate_up", "experts.down")):
            local = shard.get_submodule(name.rsplit(".", 1)[0]).local
            assert torch.equal(held[name], value[local:]), name  # rank 1 of 2 holds the second half
        else:
            assert torch.equal(held[name], value), name
    assert isinstance(whole.layers[0].moe.experts, Experts)


def test_init_is_the_same_whatever_else_the_model_holds():
    """A parameter's values depend on the seed and its name only: not on the parameters drawn before it."""
    from herd.model import nano

    base = nano().model_copy(update={"vocab_size": 256})
    small, wide_vocab = Llama4(base), Llama4(base.model_copy(update={"vocab_size": 512}))
    for model in (small, wide_vocab):
        model.init_weights(generator=torch.Generator().manual_seed(3))
    assert torch.equal(small.layers[2].attention.wq.weight, wide_vocab.layers[2].attention.wq.weight)
    again = Llama4(base)
    again.init_weights(generator=torch.Generator().manual_seed(4))
    assert not torch.equal(small.layers[2].attention.wq.weight, again.layers[2].attention.wq.weight)
