"""Router balance, the same in every training stage: the balance loss (``aux_loss``) or the selection bias (``bias``).

Under ``bias`` (aux-loss-free balancing) each MoE layer's selection bias moves after the
optimizer step, towards the experts that took fewer tokens; the counts are summed over
every rank first, so the bias stays the same on all of them.
"""

from __future__ import annotations

import torch

from herd.stages.training import TrainingConfig
from tasks.model.llama4 import Llama4, Output


def balanced_loss(loss: torch.Tensor, aux_loss: torch.Tensor, config: TrainingConfig, rows: int = 1,
                  total_rows: int = 1) -> torch.Tensor:
    """``loss`` plus the weighted balance loss under ``aux_loss``; a micro-batch of ``rows`` of ``total_rows``, its share."""
    if config.router_balance != "aux_loss":
        return loss
    return loss + config.aux_loss_coef * aux_loss * rows / total_rows


def expert_counts(out: Output, world_size: int = 1) -> list[torch.Tensor]:
    """Routed tokens per expert of each MoE layer in this forward pass, summed over the ranks."""
    counts = [stats.tokens_per_expert for stats in out.router]
    if world_size == 1 or not counts:
        return counts
    import torch.distributed as dist

    stacked = torch.stack(counts).float()
    dist.all_reduce(stacked)
    return list(stacked.long().unbind(0))


def over_capacity(out: Output, world_size: int = 1) -> torch.Tensor | None:
    """Routed rows past their expert's capacity in this forward pass, summed over the MoE layers and the ranks.

    None when the model sets no capacity (the same on every rank, so all of them skip the collective).
    """
    counts = [stats.over_capacity for stats in out.router if stats.over_capacity is not None]
    if not counts:
        return None
    total = torch.stack(counts).sum()
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return total


def update_selection_bias(model: Llama4, counts: list[torch.Tensor], rate: float) -> None:
    """Move every MoE layer's selection bias towards balance, given its routed tokens per expert."""
    moes = [block.moe for block in model.layers if block.moe is not None]
    for moe, layer_counts in zip(moes, counts):
        moe.update_selection_bias(layer_counts, rate)
