"""Training engines: what turns a loss into an optimiser step, and how that state is checkpointed.

``PlainEngine`` is one process with ``torch.optim.AdamW``. ``DeepSpeedEngine`` is data
parallel over the ranks torchrun starts (gloo on the CPU, NCCL on GPUs), with the
optimiser state sharded by ZeRO. Both take the same AdamW parameter groups (one per µP
role) and the same LR schedule, and both checkpoint to safetensors: DeepSpeed's own
checkpoints are pickles, which herd never loads from an artifact. DeepSpeed's optimizer
state is saved in pieces, each rank its own ranges of every parameter (:mod:`.shards`),
and a resume on another number of ranks, ZeRO stage or expert split reads the ranges it
holds now.

With ``expert_parallel_size`` P > 1 (ZeRO-3 only), each group of P consecutive ranks splits
every MoE layer's routed experts (``tasks/model/parallelize.py``), and ZeRO-3 partitions each
expert shard over the ranks that hold the same experts, averaging its gradient over all
ranks, as DeepSpeed does for its own expert layers. Checkpoints still hold every expert:
they are gathered to save and sliced again to resume.

A model still on the meta device (``new_model`` under DeepSpeed) is materialised here, after
its experts are sharded; at ZeRO-3 one module at a time, each rank keeping only its partition
of a module's weights before the next is drawn (``tests/test_zero3_start.py`` measures it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from herd.stages.training import TrainingConfig
from tasks.model import parallelize
from tasks.training import checkpoint, shards
from tasks.runtime import storage

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) for a single process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class PlainEngine:
    """A single process: AdamW, a LambdaLR schedule, gradient clipping."""

    def __init__(self, model: torch.nn.Module, groups: list[dict], config: TrainingConfig,
                 schedule: Callable[[int], float]) -> None:
        self.module = model
        self.config = config
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=False)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.rank, self.world_size = 0, 1

    def __call__(self, tokens: torch.Tensor, where: torch.Tensor | None = None):
        return self.module(tokens, where=where)

    def backward_and_step(self, loss: torch.Tensor) -> float:
        self.zero_grad()
        self.backward(loss)
        return self.step()

    # A step over micro-batches (GRPO): zero_grad(), backward() on each, then step().
    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip the gradients, step AdamW and the schedule; the gradient norm before clipping."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(grad_norm)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def finish(self) -> None:
        """The model already holds every weight."""

    def save(self, out: Path, step: int, remote: str | None, documents: dict[str, Any] | None = None) -> Path:
        return checkpoint.save(out, step, self.module, self.optimizer, self.scheduler, remote, documents=documents)

    def resume(self, out: Path, remote: str | None) -> checkpoint.Resumed:
        found = checkpoint.latest(out, remote)
        if found is None:
            return checkpoint.Resumed()
        resumed = checkpoint.restore(found, self.module, self.optimizer, self.scheduler)
        log.info("resuming from %s at step %d", found.name, resumed.step)
        return resumed


class DeepSpeedEngine:
    """Data parallel under DeepSpeed: every rank takes ``batch_size / world`` rows of each step's batch."""

    def __init__(self, model: torch.nn.Module, groups: list[dict], config: TrainingConfig,
                 schedule: Callable[[int], float], bf16: bool = False, device: torch.device | str = "cpu",
                 prepare: Callable[[torch.nn.Module], object] | None = None) -> None:
        import deepspeed

        self.rank, self.world_size = world()
        if config.batch_size % self.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.world_size} ranks")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.config, self.schedule = config, schedule
        self.experts = config.expert_parallel_size > 1
        groups = _by_name(model, groups)  # sharding and materialising replace the parameter objects
        if self.experts:
            _shard_experts(model, config.expert_parallel_size, self.world_size)
        if any(param.is_meta for param in model.parameters()):
            # Only this rank's experts: the rest never existed here; under ZeRO-3, only its partitions.
            model.materialize(device, _partitioner(config, self.world_size, bf16) if config.zero_stage == 3 else None)
            if prepare is not None:
                prepare(model)
        groups = _split_expert_groups(model, groups) if self.experts else _with_params(model, groups)
        self.base_lrs = [group["lr"] for group in groups]
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=False)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(config, self.world_size, bf16))
        self.module = self.engine.module
        self.step_count = 0

    def __call__(self, tokens: torch.Tensor, where: torch.Tensor | None = None):
        # ZeRO-3 frees each gathered weight once its module has run; autocast's weight cache
        # would keep a bf16 copy of every one until the forward ends: the whole model, unsharded.
        device = tokens.device.type
        with torch.autocast(device, dtype=torch.get_autocast_dtype(device), enabled=torch.is_autocast_enabled(device),
                            cache_enabled=False):
            return self.engine(tokens, where=where)

    def backward_and_step(self, loss: torch.Tensor) -> float:
        factor = self.schedule(self.step_count)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.engine.backward(loss)
        self.engine.step()
        self.step_count += 1
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def _base_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight, every expert, on every rank (a collective under ZeRO-3 or expert parallelism)."""
        if self.config.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                weights = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        else:
            weights = {k: v.detach() for k, v in self.module.state_dict().items()}
        return parallelize.gather_experts(self.module, weights) if self.experts else weights

    def finish(self) -> None:
        """Leave the model whole on every rank, as one process would hold it: what the stage writes.

        Under ZeRO-3 each rank holds a slice of every weight, and with expert parallelism only
        its own experts; both are gathered, and DeepSpeed's hooks leave the model.
        """
        if self.config.zero_stage != 3 and not self.experts:
            return
        weights = self._full_state_dict()
        self.engine.destroy()
        parallelize.unshard_experts(self.module)
        for name, param in list(self.module.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            setattr(self.module.get_submodule(owner), leaf,
                    torch.nn.Parameter(weights[name].to(param.device), requires_grad=param.requires_grad))

    def save(self, out: Path, step: int, remote: str | None, documents: dict[str, Any] | None = None) -> Path:
        """Each rank's optimizer shard; the full weights, the index and ``documents`` from rank 0; the marker once
        every file is there.

        Without ``remote`` the ranks share ``out`` (one machine or a shared disk). With one, each
        rank works in its own ``out`` and uploads the files it wrote; rank 0 writes the marker only
        after every rank has: a checkpoint missing a shard is never taken for a complete one.
        """
        import torch.distributed as dist

        final, partial = checkpoint.folders(out, step)
        weights = self._full_state_dict()  # a collective under ZeRO-3 or expert parallelism
        pieces = self._pieces() if self.config.zero_stage or self.rank == 0 else []  # ZeRO-0: each rank holds all
        described: list[list[dict] | None] = [None] * self.world_size
        dist.all_gather_object(described, shards.describe(pieces))
        adam_step = self._adam_step()  # the same on every rank, or it raises
        target = checkpoint.remote_folder(remote, final.name) if remote else None
        if self.rank == 0:
            if target:  # a checkpoint of this step left by an earlier attempt is not complete until this one is
                storage.delete(storage.join(target, checkpoint.COMPLETE))
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        partial.mkdir(parents=True, exist_ok=True)  # with a remote: this rank's own folder
        mine = partial / shards.shard_name(self.rank)
        shards.write(mine, pieces)
        written = [mine]
        if self.rank == 0:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(partial / "model.safetensors"))
            index = shards.make_index({shards.shard_name(r): entries for r, entries in enumerate(described)})
            (partial / "index.json").write_text(json.dumps(index))
            state = {"engine": "deepspeed", "step": step, "world_size": self.world_size,
                     "zero_stage": self.config.zero_stage, "expert_parallel_size": self.config.expert_parallel_size,
                     "adam_step": adam_step, "lrs": [group["lr"] for group in self.optimizer.param_groups],
                     "documents": checkpoint.write_documents(partial, documents or {})}
            (partial / "state.json").write_text(json.dumps(state, indent=2))
            written += [partial / "model.safetensors", partial / "index.json", partial / "state.json"]
            written += [partial / f"{key}.json" for key in state["documents"]]
        if target:
            for path in written:
                storage.upload(path, storage.join(target, path.name))
        dist.barrier()  # every rank's files are written, and uploaded
        if self.rank == 0:
            checkpoint.publish(partial, final, step, remote, uploaded=True)
        dist.barrier()
        if self.rank and remote:  # uploaded: drop this rank's copy (gone already where rank 0 shares the folder)
            mine.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                partial.rmdir()
        return final

    def _flat_partitions(self) -> list[torch.Tensor]:
        """The tensors AdamW steps on this rank, each with its own state: ZeRO's flat fp32 partitions, or the
        parameters themselves without ZeRO."""
        if self.config.zero_stage == 3:
            return list(self.optimizer.fp32_partitioned_groups_flat)
        if self.config.zero_stage in (1, 2):
            return list(self.optimizer.single_partition_of_fp32_groups)
        return [param for group in self._base_optimizer().param_groups for param in group["params"]]

    def _adam_step(self) -> float:
        """AdamW's step count: one for every partition of every rank."""
        import torch.distributed as dist

        base = self._base_optimizer()
        counts = {float(base.state[flat]["step"]) for flat in self._flat_partitions() if "step" in base.state[flat]}
        if len(counts) != 1:
            raise RuntimeError(f"rank {self.rank}: AdamW's partitions have taken different numbers of steps: {counts}")
        count = counts.pop()
        extremes = torch.tensor([count, -count], dtype=torch.float64)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)  # the largest count and minus the smallest
        if extremes[0] != -extremes[1]:
            raise RuntimeError(f"the ranks' AdamW step counts differ: {-extremes[1].item()} to {extremes[0].item()}")
        return count

    def _pieces(self) -> list[shards.Piece]:
        """This rank's ranges of every parameter's fp32 master weight and AdamW moments, as views to save or fill.

        ZeRO-3 holds a parameter's range ``[rank * size, (rank + 1) * size)`` in its partition
        group, at ``grad_position`` of a flat partition; ZeRO-1/2 map each parameter to its
        range of this rank's flat partition (``_hp_mapping``, what DeepSpeed's own universal
        checkpoints read); without ZeRO each rank holds every parameter whole. A sharded expert
        weight is this rank's experts of the full one: its ranges move by the experts before them.
        """
        import torch.distributed as dist

        base, opt = self._base_optimizer(), self.optimizer
        experts = {f"{prefix}.{leaf}": module
                   for prefix, module in parallelize.sharded(self.module).items() for leaf in ("gate_up", "down")}
        found = []  # (name, shape, start, flat tensor, offset in it, numel)
        if self.config.zero_stage == 3:
            for name, param in self.module.named_parameters():
                group, offset, size = opt.grad_position[opt.get_param_id(param)]
                start = dist.get_rank(group=param.ds_process_group) * size
                numel = min(size, param.ds_numel - start)  # the last partition is padded
                flat = opt.fp32_partitioned_groups_flat[group]
                found.append((name, tuple(param.ds_shape), start, flat, offset, numel))
        elif self.config.zero_stage in (1, 2):
            names = {id(param): name for name, param in self.module.named_parameters()}
            for params, flat in zip(opt.bit16_groups, opt.single_partition_of_fp32_groups):
                for param in params:
                    if param._hp_mapping is not None:  # None: no element of it in this rank's partition
                        mapping = param._hp_mapping
                        found.append((names[id(param)], tuple(param.shape), mapping.lp_fragment_address.start, flat,
                                      mapping.hp_fragment_address.start, mapping.hp_fragment_address.numel))
        else:
            found = [(name, tuple(param.shape), 0, param, 0, param.numel())
                     for name, param in self.module.named_parameters()]
        pieces = []
        for name, shape, start, flat, offset, numel in found:
            if numel <= 0:
                continue
            if name in experts:
                module = experts[name]
                start += module.rank * math.prod(shape)
                shape = (shape[0] * module.ranks, *shape[1:])
            state = base.state[flat]
            slots = {"fp32": flat.data.view(-1), "exp_avg": state["exp_avg"].view(-1),
                     "exp_avg_sq": state["exp_avg_sq"].view(-1)}
            pieces.append(shards.Piece(name, shape, start, {k: v.narrow(0, offset, numel) for k, v in slots.items()}))
        return pieces

    def resume(self, out: Path, remote: str | None) -> checkpoint.Resumed:
        """Continue from the newest complete checkpoint, whatever ranks, ZeRO stage and expert split wrote it."""
        import torch.distributed as dist

        newest = [checkpoint.newest(out, remote) if self.rank == 0 else None]
        dist.broadcast_object_list(newest, src=0)  # rank 0 decides, so that every rank loads the same one
        if newest[0] is None:
            return checkpoint.Resumed()
        found = newest[0]
        with checkpoint.files_of(out, found, remote, self.rank) as path_of:
            state = json.loads(path_of("state.json").read_text())
            if state.get("engine") != "deepspeed":
                raise ValueError(f"checkpoint {found} under {remote or out} was not written by this version of the "
                                 f"deepspeed engine ({state.get('engine', 'an older format')}): resume it with the "
                                 "engine that wrote it, or remove it to start again")
            self._load_weights(load_file(str(path_of("model.safetensors"))))
            base = self._base_optimizer()
            for flat in self._flat_partitions():  # AdamW's state as its first step makes it, filled from the pieces
                base.state[flat] = {"step": torch.tensor(state["adam_step"], dtype=torch.float32),
                                    "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
            shards.read(json.loads(path_of("index.json").read_text()), self._pieces(), path_of)
            documents = checkpoint.read_documents(state, path_of)
        self.step_count = int(state["step"])
        log.info("resuming from %s at step %d (%d ranks, from a checkpoint of %d)", found, self.step_count,
                 self.world_size, state["world_size"])
        return checkpoint.Resumed(self.step_count, documents)

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if self.experts:
            weights = parallelize.slice_experts(self.module, weights)
        if self.config.zero_stage == 3:
            import deepspeed

            # modifier_rank counts within each parameter's partition group: global rank 0 for the
            # replicated weights, the first rank of each group holding the same experts for those;
            # so every rank loads (its own experts of) the weights, and those ranks' copies win.
            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=0):
                self.module.load_state_dict(weights, strict=True)
        else:
            self.module.load_state_dict(weights, strict=True)
        if hasattr(self.optimizer, "refresh_fp32_params"):  # ZeRO 1-3: the fp32 master copy follows the weights
            self.optimizer.refresh_fp32_params()


def deepspeed_config(config: TrainingConfig, world_size: int, bf16: bool) -> dict:
    """DeepSpeed's JSON config from herd's training config; herd sets the LR itself every step."""
    return {
        "train_batch_size": config.batch_size,
        "train_micro_batch_size_per_gpu": config.batch_size // world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _by_name(model: torch.nn.Module, groups: list[dict]) -> list[dict]:
    names = {id(param): name for name, param in model.named_parameters()}
    return [{**group, "params": [names[id(param)] for param in group["params"]]} for group in groups]


def _with_params(model: torch.nn.Module, groups: list[dict]) -> list[dict]:
    params = dict(model.named_parameters())
    return [{**group, "params": [params[name] for name in group["params"]]} for group in groups]


def _shard_experts(model: torch.nn.Module, size: int, world_size: int) -> None:
    """Keep this rank's share of the routed experts, split over groups of ``size`` ranks (on the meta device too).

    The expert parameters then carry the marks DeepSpeed's own expert layers set
    (``deepspeed/module_inject/auto_ep_layer.py``): excluded from the data-parallel
    all-reduce and broadcast (``allreduce=False``, ``group_name``), and, under ZeRO-3,
    partitioned over the ranks that hold the same experts, their gradient averaged over all
    ranks and their norm summed over the expert-parallel group: see :func:`_split_expert_groups`,
    which runs once the parameters are real.
    """
    from deepspeed.utils import groups as ds_groups

    if world_size % size:
        raise ValueError(f"expert_parallel_size {size} does not divide the {world_size} ranks")
    name = f"ep_size_{size}"
    if name not in ds_groups._get_expert_parallel_group_dict():
        ds_groups._create_expert_and_data_parallel(size)
    parallelize.shard_experts(model, ds_groups._get_expert_parallel_group(name))


def _split_expert_groups(model: torch.nn.Module, groups: list[dict]) -> list[dict]:
    """Mark the expert parameters for DeepSpeed; the optimizer groups (by name), with experts apart.

    ZeRO-3 keeps a bucket's parameters on one partition group, hence the separate optimizer groups.
    """
    for module in parallelize.sharded(model).values():
        _mark_experts(module)
    params = dict(model.named_parameters())
    split = []
    for group in groups:
        now = [params[param_name] for param_name in group["params"]]
        dense = [param for param in now if getattr(param, "allreduce", True)]
        experts = [param for param in now if not getattr(param, "allreduce", True)]
        split += [{**group, "params": dense}] if dense else []
        split += [{**group, "name": f"{group['name']}_experts", "params": experts}] if experts else []
    return split


def _mark_experts(module: parallelize.ShardedExperts) -> None:
    """Mark a layer's expert parameters as DeepSpeed's own expert layers are (see :func:`_shard_experts`)."""
    from deepspeed.utils import groups as ds_groups

    name = f"ep_size_{module.ranks}"
    for param in module.parameters(recurse=False):
        param.allreduce, param.group_name = False, name
        param.ds_zero_placement_family, param.ds_zero_partition_group_name = "autoep_expert", name
        param.ds_zero_partition_process_group = ds_groups._get_expert_data_parallel_group(name)


def _partitioner(config: TrainingConfig, world_size: int, bf16: bool) -> Callable[[torch.nn.Module], None]:
    """What :meth:`Llama4.materialize` hands each module's freshly initialised parameters to under ZeRO-3: keep
    this rank's partition and free the rest (``deepspeed.zero.Init``, as if the module were built inside it).

    Every rank draws the same values (each parameter has its own seeded stream), so the partitions
    are those of the whole model a single process initialises. An expert shard is partitioned over
    the ranks holding the same experts, which its marks name; the rest over every rank.
    """
    import deepspeed

    ds_config = deepspeed_config(config, world_size, bf16)

    def partition(module: torch.nn.Module) -> None:
        if not any(True for _ in module.parameters(recurse=False)):
            return
        if isinstance(module, parallelize.ShardedExperts):
            _mark_experts(module)
        deepspeed.zero.Init(module=module, config_dict_or_path=ds_config,
                            dtype=torch.bfloat16 if bf16 else torch.float32)  # children are partitioned already
        _return_freed_memory()

    return partition


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    glibc serves a block under its mmap threshold (which rises to 32 MB as large blocks are
    freed) from the heap, and keeps the pages of a freed one resident: without this, the whole
    weights drawn before partitioning would stay in a rank's RSS wherever they are that small.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


Engine = PlainEngine | DeepSpeedEngine


def make_engine(model: torch.nn.Module, groups: list[dict], config: TrainingConfig,
                schedule: Callable[[int], float], bf16: bool = False, device: torch.device | str = "cpu",
                prepare: Callable[[torch.nn.Module], object] | None = None) -> Engine:
    """The engine ``config`` asks for. A model still on the meta device (DeepSpeed only) is materialised on
    ``device`` once its experts are sharded, then handed to ``prepare`` (FP8 conversion) before the engine wraps it."""
    model.activation_checkpointing = config.activation_checkpointing
    if config.engine == "deepspeed":
        return DeepSpeedEngine(model, groups, config, schedule, bf16, device, prepare)
    return PlainEngine(model, groups, config, schedule)
