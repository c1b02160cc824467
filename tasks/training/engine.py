"""Training engines: what turns a loss into an optimiser step, and how that state is checkpointed.

``PlainEngine`` is one process with ``torch.optim.AdamW``. ``DeepSpeedEngine`` is data
parallel over the ranks torchrun starts (gloo on the CPU, NCCL on GPUs), with the
optimiser state sharded by ZeRO. Both take the same AdamW parameter groups (one per µP
role) and the same LR schedule, and both checkpoint to safetensors: DeepSpeed's own
checkpoints are pickles, which herd never loads from an artifact.

With ``expert_parallel_size`` P > 1 (ZeRO-3 only), each group of P consecutive ranks splits
every MoE layer's routed experts (``tasks/model/parallelize.py``), and ZeRO-3 partitions each
expert shard over the ranks that hold the same experts, averaging its gradient over all
ranks, as DeepSpeed does for its own expert layers. Checkpoints still hold every expert:
they are gathered to save and sliced again to resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from herd.stages.training import TrainingConfig
from tasks.model import parallelize
from tasks.training import checkpoint
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

    def __call__(self, tokens: torch.Tensor):
        return self.module(tokens)

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

    def save(self, out: Path, step: int, remote: str | None) -> Path:
        return checkpoint.save(out, step, self.module, self.optimizer, self.scheduler, remote)

    def resume(self, out: Path, remote: str | None) -> int:
        found = checkpoint.latest(out, remote)
        if found is None:
            return 0
        step = checkpoint.restore(found, self.module, self.optimizer, self.scheduler)
        log.info("resuming from %s at step %d", found.name, step)
        return step


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
            model.materialize(device)  # only this rank's experts: the rest never existed here
            if prepare is not None:
                prepare(model)
        groups = _split_expert_groups(model, groups) if self.experts else _with_params(model, groups)
        self.base_lrs = [group["lr"] for group in groups]
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=False)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(config, self.world_size, bf16))
        self.module = self.engine.module
        self.step_count = 0

    def __call__(self, tokens: torch.Tensor):
        # ZeRO-3 frees each gathered weight once its module has run; autocast's weight cache
        # would keep a bf16 copy of every one until the forward ends: the whole model, unsharded.
        device = tokens.device.type
        with torch.autocast(device, dtype=torch.get_autocast_dtype(device), enabled=torch.is_autocast_enabled(device),
                            cache_enabled=False):
            return self.engine(tokens)

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

    def save(self, out: Path, step: int, remote: str | None) -> Path:
        """Full weights from rank 0, each rank's optimizer shard beside them, the marker last."""
        import torch.distributed as dist

        root = out / "checkpoints"
        final, partial = root / f"step-{step:08d}", root / f".step-{step:08d}.partial"
        weights = self._full_state_dict()  # a collective under ZeRO-3: every rank takes part
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in weights.items()}, str(partial / "model.safetensors"))
        dist.barrier()
        save_file(self._optimizer_tensors(), str(partial / f"optimizer-rank{self.rank}.safetensors"))
        dist.barrier()
        if self.rank == 0:
            state = {"step": step, "world_size": self.world_size, "zero_stage": self.config.zero_stage,
                     "expert_parallel_size": self.config.expert_parallel_size,
                     "lrs": [group["lr"] for group in self.optimizer.param_groups]}
            (partial / "state.json").write_text(json.dumps(state, indent=2))
            checkpoint.publish(partial, final, step, remote)
        dist.barrier()
        return final

    def _optimizer_slots(self) -> list[list[torch.Tensor]]:
        """Per optimizer group, the flat partitions whose AdamW state this rank holds."""
        base = self._base_optimizer()
        if self.config.zero_stage == 3:
            # ZeRO-3 puts a sub-group's flat partition into its optimizer group only while stepping it.
            owner = self.optimizer.sub_group_to_group_id
            flats = self.optimizer.fp32_partitioned_groups_flat
            return [[flat for i, flat in enumerate(flats) if owner[i] == g] for g in range(len(base.param_groups))]
        return [list(group["params"]) for group in base.param_groups]

    def _optimizer_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        base = self._base_optimizer()
        for g, params in enumerate(self._optimizer_slots()):
            for p, param in enumerate(params):
                for key, value in base.state.get(param, {}).items():
                    if torch.is_tensor(value):
                        tensors[f"g{g}.p{p}.{key}"] = value.detach().reshape(-1).contiguous().clone()
        return tensors

    def resume(self, out: Path, remote: str | None) -> int:
        import torch.distributed as dist

        found = checkpoint.latest(out, remote) if self.rank == 0 else None
        # Rank 0 finds (and, from S3, fetches) the checkpoint; the others read the same folder.
        shared = [str(found) if found else ""]
        dist.broadcast_object_list(shared, src=0)
        if not shared[0]:
            return 0
        found = Path(shared[0])
        state = json.loads((found / "state.json").read_text())
        # The optimizer shards follow the layout: ranks, ZeRO stage and expert split must be the same.
        written = (state["world_size"], state["zero_stage"], state.get("expert_parallel_size", 1))
        this_run = (self.world_size, self.config.zero_stage, self.config.expert_parallel_size)
        if written != this_run:
            raise ValueError(f"checkpoint {found} was written by {written[0]} ranks at ZeRO stage {written[1]} with "
                             f"{written[2]}-way expert parallelism; this run has {this_run[0]} at stage "
                             f"{this_run[1]} with {this_run[2]}")
        shard = found / f"optimizer-rank{self.rank}.safetensors"
        if not shard.exists() and remote:
            storage.download(storage.join(remote, "checkpoints", found.name, shard.name), shard)
        self._load_weights(load_file(str(found / "model.safetensors")))
        base, saved = self._base_optimizer(), load_file(str(shard))
        for g, params in enumerate(self._optimizer_slots()):
            for p, param in enumerate(params):
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    name = f"g{g}.p{p}.{key}"
                    if name in saved:
                        value = saved[name]
                        base.state[param][key] = value.reshape(()) if key == "step" else value.view_as(param).clone()
        self.step_count = int(state["step"])
        log.info("resuming from %s at step %d (%d ranks)", found.name, self.step_count, self.world_size)
        return self.step_count

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
    from deepspeed.utils import groups as ds_groups

    experts = next(iter(parallelize.sharded(model).values()))
    name = f"ep_size_{experts.ranks}"
    for param in parallelize.expert_parameters(model):
        param.allreduce, param.group_name = False, name
        param.ds_zero_placement_family, param.ds_zero_partition_group_name = "autoep_expert", name
        param.ds_zero_partition_process_group = ds_groups._get_expert_data_parallel_group(name)
    params = dict(model.named_parameters())
    split = []
    for group in groups:
        now = [params[param_name] for param_name in group["params"]]
        dense = [param for param in now if getattr(param, "allreduce", True)]
        experts = [param for param in now if not getattr(param, "allreduce", True)]
        split += [{**group, "params": dense}] if dense else []
        split += [{**group, "name": f"{group['name']}_experts", "params": experts}] if experts else []
    return split


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
