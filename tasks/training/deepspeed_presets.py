"""DeepSpeed settings for pretraining a model preset on H100 nodes, with the memory each GPU needs.

    herd model deepspeed scout                                  # its default: 32 nodes of 8 H100s
    herd model deepspeed maverick --nodes 64 --gpus-per-node 8 --json
    herd model deepspeed small --nodes 1 --gpus-per-node 1

A plan is the herd training settings (``pretrain.*``: pass them with ``--set``) and the
DeepSpeed config herd's engine builds from them (:func:`tasks.training.engine.deepspeed_config`,
unchanged: what the plan shows is what DeepSpeed gets), with an estimate of one GPU's memory.

What every plan uses, and why:

* ZeRO-3: weights, gradients and AdamW state partitioned over the ranks. Even Scout's 108B
  parameters need 1.7 TB of fp32 weights, gradients and moments; only stage 3 spreads all of it.
* Expert parallelism over the GPUs of one node (the all_to_all stays on NVLink; DeepSpeed puts
  consecutive ranks in an expert-parallel group), or over whole nodes where one node's split
  does not fit: each GPU holds E/P experts of every MoE layer, and ZeRO-3 partitions them
  over the ranks that hold the same experts. Without it, ZeRO-3 would gather a layer's
  experts whole, 64 GB for one Maverick layer in fp32.
  DeepSpeed's stage 1/2 optimizer splits expert groups only for DeepSpeed's own MoE layers;
  its stage 3 reads the placement from the parameters, which is why herd's experts need it.
* bf16: the forward and backward run under ``torch.autocast(bfloat16)`` (``precision=bf16``)
  while weights, gradients and optimizer state stay fp32, sharded. DeepSpeed's own ``bf16``
  mode (bf16 weights) is off: herd does not run it, and the aux-loss-free selection bias
  would lose its small steps in bf16.
* Activation checkpointing: each block's input is kept and the block recomputed in backward.

The estimate (bytes on one GPU; fp32 = 4 B, bf16 = 2 B), from parameter counts on the meta
device and DeepSpeed's ZeRO-3 defaults:

* model states: 16 B per parameter (fp32 weight, gradient, two AdamW moments) over all W
  ranks; the experts are split P ways and each split partitioned over W/P ranks: also 1/W;
* gathered weights: ``stage3_max_live_parameters`` kept plus the largest module being
  gathered and the prefetch bucket, fp32, and the largest module's bf16 copy that autocast
  makes and backward keeps;
* gradient buffers: the largest module's full fp32 gradient before its reduce-scatter, plus
  one ``reduce_bucket_size`` bucket;
* activations: every block's fp32 input, plus one block recomputed with its gradients
  (tensors autograd keeps, counted per token in :func:`block_activation_bytes`), the routed
  rows of the busiest expert-parallel rank taken as twice the mean; the logits and their
  gradient in the loss;
* 4 GiB for the CUDA context and NCCL, and 10% for allocator fragmentation.

It leaves out what the code does not do: no tensor, pipeline or sequence parallelism, no
FP8, no optimizer offload, no fused loss. So Behemoth's plan is short: 8192-token sequences
with a 16k-wide fp32 residual stream cost 51 GB of checkpointed block inputs alone, and only
2048-token sequences fit, on 32K GPUs (as many as Meta's FP8 run; LLAMA4_SPEC §2.1); Maverick's
experts split over two nodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from herd.model import ModelConfig, model_preset
from herd.stages.pretrain import PretrainConfig
from tasks.model.llama4 import Experts, Llama4
from tasks.training.engine import deepspeed_config

H100_BYTES = 80 * 10**9
GIB = 2**30
FP32 = 4
# DeepSpeed's ZeRO-3 defaults, which herd's config leaves as they are (the test reads them back
# from DeepSpeed's parser): parameters kept gathered, the prefetch and reduce buckets, in elements.
ZERO3_DEFAULTS = {"stage3_max_live_parameters": 10**9, "stage3_prefetch_bucket_size": 5 * 10**7,
                  "reduce_bucket_size": 5 * 10**8}


@dataclass(frozen=True)
class Recipe:
    """A preset's default run: where it trains and the sequences each GPU takes per step."""

    nodes: int
    gpus_per_node: int
    seq_len: int
    micro_batch: int


# 8192 tokens: Llama 4's attention chunk and Scout's original RoPE context; Behemoth fits 2048 (see above).
RECIPES = {
    "small": Recipe(nodes=1, gpus_per_node=1, seq_len=4096, micro_batch=8),
    "small_maverick": Recipe(nodes=1, gpus_per_node=1, seq_len=4096, micro_batch=8),
    "small_behemoth": Recipe(nodes=1, gpus_per_node=8, seq_len=4096, micro_batch=4),
    "scout": Recipe(nodes=32, gpus_per_node=8, seq_len=8192, micro_batch=1),
    "maverick": Recipe(nodes=128, gpus_per_node=8, seq_len=8192, micro_batch=1),
    "behemoth": Recipe(nodes=4096, gpus_per_node=8, seq_len=2048, micro_batch=1),  # Meta's 32K GPUs
}


@dataclass(frozen=True)
class Memory:
    """Estimated bytes on one GPU, by what holds them."""

    model_states: int
    gathered_weights: int
    gradient_buffers: int
    activations: int
    logits: int
    overhead: int

    @property
    def total(self) -> int:
        return sum(asdict(self).values())


@dataclass(frozen=True)
class Plan:
    preset: str
    nodes: int
    gpus_per_node: int
    training: dict  # pretrain.* settings
    deepspeed: dict  # what herd's engine hands deepspeed.initialize
    memory: Memory
    host_bytes: int  # what one rank materialises on the host at start: its ZeRO-3 partition of the weights, fp32

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def fits(self) -> bool:
        return self.memory.total <= H100_BYTES

    def to_json(self) -> dict:
        return {"preset": self.preset, "nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
                "world_size": self.world_size, "training": self.training, "deepspeed": self.deepspeed,
                "memory_bytes": {**asdict(self.memory), "total": self.memory.total}, "host_bytes": self.host_bytes,
                "h100_bytes": H100_BYTES, "fits": self.fits}


def expert_splits(config: ModelConfig, gpus_per_node: int, world_size: int) -> list[int]:
    """Expert-parallel sizes to try, cheapest all_to_all first: the most inside one node, then whole nodes."""
    inside = max(p for p in range(1, gpus_per_node + 1) if config.n_experts % p == 0 and gpus_per_node % p == 0)
    across = [p for p in range(2 * gpus_per_node, world_size + 1, gpus_per_node)
              if config.n_experts % p == 0 and world_size % p == 0]
    return [inside, *across]


def plan(preset: str, nodes: int | None = None, gpus_per_node: int | None = None,
         expert_parallel: int | None = None) -> Plan:
    """The training settings, DeepSpeed config and memory estimate of ``preset`` on ``nodes`` x ``gpus_per_node``."""
    recipe = RECIPES.get(preset, RECIPES["small"])
    nodes = nodes or recipe.nodes
    gpus_per_node = gpus_per_node or recipe.gpus_per_node
    config, world_size = model_preset(preset), nodes * gpus_per_node
    if expert_parallel and (config.n_experts % expert_parallel or world_size % expert_parallel):
        raise ValueError(f"expert_parallel_size {expert_parallel} must divide the {config.n_experts} experts "
                         f"and the {world_size} GPUs")
    for ep in [expert_parallel] if expert_parallel else expert_splits(config, gpus_per_node, world_size):
        memory = estimate(config, world_size, ep, recipe.micro_batch, recipe.seq_len)
        if memory.total <= H100_BYTES:
            break
    training = PretrainConfig(
        engine="deepspeed", zero_stage=3, expert_parallel_size=ep, activation_checkpointing=True,
        precision="bf16", seq_len=recipe.seq_len, batch_size=recipe.micro_batch * world_size)
    deepspeed = deepspeed_config(training, world_size, bf16=False)  # the engine's own call in train()
    settings = training.model_dump(include={"engine", "zero_stage", "expert_parallel_size",
                                            "activation_checkpointing", "precision", "seq_len", "batch_size"})
    return Plan(preset, nodes, gpus_per_node, settings, deepspeed, memory, host_bytes(config, ep, world_size))


def host_bytes(config: ModelConfig, ep: int, world_size: int) -> int:
    """One rank's weights (fp32) once started under ZeRO-3: its partition of every parameter.

    The model is built on the meta device, each rank keeps its E/P experts of every layer, then
    materialises one module at a time, keeping its partition of each: ``1/W`` of a dense weight,
    ``P/W`` of its expert weights (partitioned over the ``W/P`` ranks holding the same experts),
    padded as ZeRO-3 pads, to a multiple of the group. While a module is drawn its own parameters
    are whole for a moment: the start's peak is this plus the largest module's own parameters.
    """
    with torch.device("meta"):
        model = Llama4(config)
    held = 0
    for module in model.modules():
        experts = isinstance(module, Experts)
        group = world_size // ep if experts else world_size
        held += sum(math.ceil(p.numel() // (ep if experts else 1) / group) for p in module.parameters(recurse=False))
    return FP32 * held


def estimate(config: ModelConfig, world_size: int, ep: int, micro_batch: int, seq_len: int,
             checkpointing: bool = True) -> Memory:
    """One GPU's memory under herd's ZeRO-3 plan (see the module docstring for what is counted)."""
    with torch.device("meta"):
        model = Llama4(config)
    total = sum(p.numel() for p in model.parameters())
    # ZeRO-3 gathers a module's own parameters at once; an Experts module holds E/P experts here.
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) // (ep if isinstance(module, Experts) else 1)
                  for module in model.modules())
    zero = ZERO3_DEFAULTS
    tokens = micro_batch * seq_len
    blocks = [block_activation_bytes(config, layer) for layer in range(config.n_layers)]
    if checkpointing:
        activations = tokens * (config.n_layers * FP32 * config.dim + 2 * max(blocks))
    else:
        activations = tokens * (sum(blocks) + max(blocks))
    logits = tokens * config.vocab_size * (2 + FP32 + FP32 + FP32)  # bf16 logits, fp32 copy, log-softmax, grad
    states = math.ceil(total * 4 * FP32 / world_size)
    gathered = FP32 * (zero["stage3_max_live_parameters"] + largest + zero["stage3_prefetch_bucket_size"]) + 2 * largest
    gradients = FP32 * (largest + zero["reduce_bucket_size"])
    subtotal = states + gathered + gradients + activations + logits
    return Memory(states, gathered, gradients, activations, logits, 4 * GIB + subtotal // 10)


def block_activation_bytes(config: ModelConfig, layer: int) -> int:
    """Bytes per token autograd keeps for one block's backward under bf16 autocast (fp32 residual).

    Attention: the norm's fp32 input and output, the bf16 casts into wq/wk/wv, q/k/v and
    their fp32 RoPE and QK-norm copies, the attention output. MoE: per routed row (top_k of
    them, doubled for the busiest rank) the fp32 gathered and scaled input, its bf16 cast, the
    gate/up output, SiLU and product; the shared expert and the dense FFN likewise. Measured
    on the CPU (``tests/test_deepspeed_presets.py``), autograd keeps 55-75% of this.
    """
    d, h, k, dh = config.dim, config.n_heads, config.n_kv_heads, config.head_dim
    attention = 10 * d + 18 * (h + k) * dh + 8 * d
    if config.is_moe(layer):
        routed = 2 * config.top_k * (16 * d + 10 * config.ffn_dim)
        ffn = routed + 4 * d + 8 * config.ffn_dim + 2 * d
    else:
        ffn = 4 * d + 8 * config.dense_ffn_dim
    return attention + ffn


def format_plan(found: Plan) -> str:
    memory = found.memory
    rows = [(name, value) for name, value in asdict(memory).items()] + [("total", memory.total)]
    lines = [(f"{found.preset} on {found.nodes} node(s) x {found.gpus_per_node} GPU(s) = {found.world_size}: "
              f"ZeRO-3, {found.training['expert_parallel_size']}-way expert parallel, bf16 autocast, "
              "activation checkpointing"),
             "  herd settings: " + " ".join(f"--set pretrain.{k}={str(v).lower() if isinstance(v, bool) else v}"
                                            for k, v in found.training.items()),
             "  memory per GPU (estimate):",
             *(f"    {name:<17} {value / 1e9:8.1f} GB" for name, value in rows),
             f"  {'fits' if found.fits else 'does NOT fit'} an 80 GB H100",
             f"  host memory per rank at start (its partition of the weights): {found.host_bytes / 1e9:.2f} GB"]
    return "\n".join(lines)
