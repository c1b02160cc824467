"""Expert parallelism: the ranks of a group split every MoE layer's routed experts between them.

    shard_experts(model, group)                         # after init, before an engine wraps the model
    full = gather_experts(model, model.state_dict())    # every expert again (a collective)
    model.load_state_dict(slice_experts(model, full))   # each rank keeps its own
    unshard_experts(model)                              # room for every expert: then load ``full``

Shape legend (the rest as in ``tasks/model/llama4.py``): P ranks in the group, L experts per
rank (E/P), A rows this rank routes (sorted by expert), R rows that arrive at this rank.

Rank r of the group holds experts [r*L, (r+1)*L). Nothing else is split (attention, router,
shared expert, norms and embeddings are data parallel as before), so a MoE layer routes its own
tokens as before; only the routed rows travel: to the rank holding their expert, through it,
and back, with one ``all_to_all`` each way after one of the per-expert counts (gloo and NCCL
both implement it, uneven splits included). Backward
sends the gradients the same way, so an expert's gradient on its rank sums the contributions of
every rank's tokens: what one process holding all experts would compute for the sum of the
ranks' losses (``tests/test_expert_parallel.py``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tasks.model.llama4 import Experts, Llama4


class _AllToAll(torch.autograd.Function):
    """``send[p]`` rows go to rank p, ``recv[p]`` arrive from it; backward returns the gradients the same way."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = rows.new_empty(sum(recv), *rows.shape[1:])
        dist.all_to_all_single(out, rows.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_empty(sum(ctx.send), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return out, None, None, None


class ShardedExperts(Experts):
    """This rank's L experts of a layer of E; called like :class:`Experts`, with all E counts."""

    def __init__(self, full: Experts, group) -> None:
        torch.nn.Module.__init__(self)
        self.group = group
        self.ranks, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.n_experts = full.gate_up.shape[0]
        if self.n_experts % self.ranks:
            raise ValueError(f"{self.n_experts} experts do not split over {self.ranks} expert-parallel ranks")
        self.local = self.n_experts // self.ranks
        self.hidden, self.dim = full.down.shape[1:]
        self.row_alignment = full.row_alignment
        self.first_expert = self.rank * self.local  # its global index: what init_weights seeds it by
        mine = slice(self.first_expert, self.first_expert + self.local)
        self.gate_up = torch.nn.Parameter(full.gate_up.detach()[mine].clone())
        self.down = torch.nn.Parameter(full.down.detach()[mine].clone())

    def forward(self, routed_in_AD: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
        P, L = self.ranks, self.local
        send_PL = tokens_per_expert_E.view(P, L)
        recv_PL = torch.empty_like(send_PL)  # rows arriving from each rank for each of my experts
        dist.all_to_all_single(recv_PL, send_PL, group=self.group)
        # The collective takes its splits on the host: expert parallelism's one wait per layer.
        send, recv = send_PL.sum(1).tolist(), recv_PL.sum(1).tolist()
        routed = sum(send)  # the rows after these are over capacity: they stay here, as zeros
        arrived_RD = _AllToAll.apply(routed_in_AD[:routed], send, recv, self.group)  # by source rank, then expert
        expert_R = torch.repeat_interleave(torch.arange(L, device=recv_PL.device).repeat(P), recv_PL.flatten(),
                                           output_size=sum(recv))
        by_expert_R = torch.argsort(expert_R, stable=True)
        out_RD = super().forward(arrived_RD[by_expert_R], recv_PL.sum(0))
        back_R = torch.empty_like(by_expert_R)
        back_R[by_expert_R] = torch.arange(len(by_expert_R), device=back_R.device)
        out_AD = _AllToAll.apply(out_RD[back_R], recv, send, self.group)
        return F.pad(out_AD, (0, 0, 0, routed_in_AD.shape[0] - routed))


def shard_experts(model: Llama4, group) -> None:
    """Keep only this rank's experts in every MoE layer (the model must hold all of them, the same on every rank)."""
    for block in model.layers:
        if block.moe is not None and not isinstance(block.moe.experts, ShardedExperts):
            block.moe.experts = ShardedExperts(block.moe.experts, group)


def unshard_experts(model: Llama4) -> None:
    """Every MoE layer with room for all E experts again (uninitialised: load the gathered weights next)."""
    for block in model.layers:
        if block.moe is not None and isinstance(block.moe.experts, ShardedExperts):
            shard = block.moe.experts
            block.moe.experts = Experts(shard.n_experts, shard.dim, shard.hidden).to(shard.down.device)


def sharded(model: torch.nn.Module) -> dict[str, ShardedExperts]:
    """Prefix of each sharded layer's parameter names (``layers.0.moe.experts``) -> its module."""
    return {name: module for name, module in model.named_modules() if isinstance(module, ShardedExperts)}


def expert_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [param for module in sharded(model).values() for param in module.parameters()]


def gather_experts(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every sharded expert weight replaced by all E experts. Every rank of the group must call it."""
    full = dict(state)
    for prefix, module in sharded(model).items():
        for leaf in ("gate_up", "down"):
            mine = state[f"{prefix}.{leaf}"].contiguous()
            parts = [torch.empty_like(mine) for _ in range(module.ranks)]
            dist.all_gather(parts, mine, group=module.group)
            full[f"{prefix}.{leaf}"] = torch.cat(parts)
    return full


def slice_experts(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict cut down to this rank's experts: what the sharded model loads."""
    local = dict(state)
    for prefix, module in sharded(model).items():
        mine = slice(module.rank * module.local, (module.rank + 1) * module.local)
        for leaf in ("gate_up", "down"):
            local[f"{prefix}.{leaf}"] = state[f"{prefix}.{leaf}"][mine]
    return local
