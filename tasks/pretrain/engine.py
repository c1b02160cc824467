"""Training engines: what turns a loss into an optimiser step, and how that state is checkpointed.

``PlainEngine`` is one process with ``torch.optim.AdamW``. ``DeepSpeedEngine`` is data
parallel over the ranks torchrun starts (gloo on the CPU, NCCL on GPUs), with the
optimiser state sharded by ZeRO. Both take the same AdamW parameter groups (one per µP
role) and the same LR schedule, and both checkpoint to safetensors: DeepSpeed's own
checkpoints are pickles, which herd never loads from an artifact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from herd.stages.training import TrainingConfig
from tasks.pretrain import checkpoint
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
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(grad_norm)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

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
                 schedule: Callable[[int], float], bf16: bool = False) -> None:
        import deepspeed

        self.rank, self.world_size = world()
        if config.batch_size % self.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.world_size} ranks")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.config, self.schedule = config, schedule
        self.base_lrs = [group["lr"] for group in groups]
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), foreach=False)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(config, self.world_size, bf16))
        self.module = self.engine.module
        self.step_count = 0

    def __call__(self, tokens: torch.Tensor):
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
        if self.config.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                return {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        return {k: v.detach() for k, v in self.module.state_dict().items()}

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
                     "lrs": [group["lr"] for group in self.optimizer.param_groups]}
            (partial / "state.json").write_text(json.dumps(state, indent=2))
            checkpoint.publish(partial, final, step, remote)
        dist.barrier()
        return final

    def _optimizer_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        base = self._base_optimizer()
        for g, group in enumerate(base.param_groups):
            for p, param in enumerate(group["params"]):
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
        if state["world_size"] != self.world_size or state["zero_stage"] != self.config.zero_stage:
            raise ValueError(f"checkpoint {found} was written by {state['world_size']} ranks at ZeRO stage "
                             f"{state['zero_stage']}; this run has {self.world_size} at stage {self.config.zero_stage}")
        shard = found / f"optimizer-rank{self.rank}.safetensors"
        if not shard.exists() and remote:
            storage.download(storage.join(remote, "checkpoints", found.name, shard.name), shard)
        self._load_weights(load_file(str(found / "model.safetensors")))
        base, saved = self._base_optimizer(), load_file(str(shard))
        for g, group in enumerate(base.param_groups):
            for p, param in enumerate(group["params"]):
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    name = f"g{g}.p{p}.{key}"
                    if name in saved:
                        value = saved[name]
                        base.state[param][key] = value.reshape(()) if key == "step" else value.view_as(param).clone()
        self.step_count = int(state["step"])
        log.info("resuming from %s at step %d (%d ranks)", found.name, self.step_count, self.world_size)
        return self.step_count

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        if self.config.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=0):
                if self.rank == 0:
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


def make_engine(model: torch.nn.Module, groups: list[dict], config: TrainingConfig,
                schedule: Callable[[int], float], bf16: bool = False):
    if config.engine == "deepspeed":
        return DeepSpeedEngine(model, groups, config, schedule, bf16)
    return PlainEngine(model, groups, config, schedule)
