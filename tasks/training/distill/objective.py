"""Co-distillation as an objective of the training loop, and the record of its soft weights over training.

    objective = make_objective(pipeline.codistill, total_steps=pipeline.pretrain.steps)
    history = train(model, config, batches, out, on_metrics, ..., objective=objective)
    ctx.tracker.log_plot("soft_weight.png", objective.weight_log.draw)
    log_csv(ctx, "soft_weight.csv", objective.weight_log.rows())

``batches`` carries the teacher's targets in ``Batch.extra``: a
:class:`~tasks.training.distill.teachers.CachedTeacherWindows` (the cache) or an
:class:`~tasks.training.distill.teachers.OnlineTeacherWindows` (a teacher forward each step). The
loss is :func:`tasks.training.distill.losses.codistill_loss`; scheme ``none`` is the plain
next-token loss, with the same metrics, for a baseline.
"""

from __future__ import annotations

import torch

from herd.stages.codistill import CodistillConfig
from tasks.model.llama4 import Output
from tasks.training.batch import Batch
from tasks.training.distill.losses import TeacherTargets, codistill_loss
from tasks.training.loop import NEXT_TOKEN_LOSS

QUANTILES = (0.1, 0.5, 0.9)


def teacher_targets(batch: Batch, rows: slice, device: torch.device) -> TeacherTargets | None:
    """This rank's rows of the teacher targets in ``batch.extra``; None when the batch has none."""
    extra = batch.extra or {}
    selected = extra.get("teacher_rows")
    if selected is not None and selected != rows:
        raise ValueError(f"the batch holds teacher targets for rows {selected}, this rank trains on {rows}")

    def mine(tensor: torch.Tensor) -> torch.Tensor:
        return (tensor if selected is not None else tensor[rows]).to(device)

    if "teacher_logits" in extra:
        return TeacherTargets(logits_BSV=mine(extra["teacher_logits"]))
    if "teacher_ids" in extra:
        return TeacherTargets(ids_BSK=mine(extra["teacher_ids"]), logprobs_BSK=mine(extra["teacher_logprobs"]))
    return None


class WeightLog:
    """The distribution of the per-token soft weight at every step: a histogram over [0, 1] and a few quantiles.

    A resumed run records from its resume step on.
    """

    def __init__(self, bins: int = 20) -> None:
        self.bins = bins
        self.steps: list[int] = []
        self.histograms: list[list[float]] = []  # per step, share of tokens per bin
        self.summaries: list[dict[str, float]] = []  # per step, mean and quantiles

    def record(self, step: int, weights: torch.Tensor) -> dict[str, float]:
        flat = weights.detach().float().flatten()
        counts = torch.histc(flat, bins=self.bins, min=0.0, max=1.0)
        stats = torch.cat([flat.mean()[None], torch.quantile(flat, torch.tensor(QUANTILES, device=flat.device))])
        values = stats.tolist()
        summary = {"mean": values[0], **{f"p{round(q * 100)}": v for q, v in zip(QUANTILES, values[1:])}}
        self.steps.append(step)
        self.histograms.append((counts / max(1, flat.numel())).tolist())
        self.summaries.append(summary)
        return summary

    def rows(self) -> list[dict]:
        """One row per step: ``step, mean, p10, p50, p90`` (a CSV report)."""
        return [{"step": step, **{k: round(v, 6) for k, v in summary.items()}}
                for step, summary in zip(self.steps, self.summaries)]

    def draw(self, figure) -> None:
        """Share of tokens per weight bin over the steps (heatmap), with the mean and quantiles on top."""
        axes = figure.add_subplot()
        if not self.steps:
            axes.set_title("no soft weights recorded")
            return
        grid = torch.tensor(self.histograms).T.numpy()  # (bins, steps)
        first, last = self.steps[0], self.steps[-1]
        image = axes.imshow(grid, origin="lower", aspect="auto", cmap="magma",
                            extent=(first - 0.5, last + 0.5, 0.0, 1.0), interpolation="nearest")
        for key, style in (("mean", "-"), ("p10", ":"), ("p50", "--"), ("p90", ":")):
            axes.plot(self.steps, [s[key] for s in self.summaries], style, color="cyan", linewidth=1, label=key)
        axes.set_xlabel("step")
        axes.set_ylabel("soft weight w (0: label, 1: teacher)")
        axes.set_ylim(0, 1)
        axes.set_title("Co-distillation: distribution of the per-token soft weight over training")
        axes.legend(loc="upper right", fontsize="small")
        figure.colorbar(image, label="share of tokens")


class CodistillObjective:
    """``objective(out_model, targets, batch, rows, step) -> (loss, metrics)`` for :func:`tasks.training.loop.train`."""

    def __init__(self, config: CodistillConfig, total_steps: int, weight_log: WeightLog | None = None) -> None:
        self.config, self.total_steps = config, total_steps
        self.weight_log = weight_log or WeightLog()

    def __call__(self, out_model: Output, targets: torch.Tensor, batch: Batch, rows: slice,
                 step: int) -> tuple[torch.Tensor, dict[str, float]]:
        teacher = None if self.config.scheme == "none" else teacher_targets(batch, rows, targets.device)
        token_weights = None if batch.weights is None else batch.weights[rows].to(targets.device)
        parts = codistill_loss(out_model.logits, targets, teacher, self.config, step, self.total_steps, token_weights)
        weight = self.weight_log.record(step, parts.weights_BS)
        # The loss a plain run would log, weighted as its loss is: the run's ``loss``, the mix its ``objective``.
        next_token = parts.ce_BS.mean() if token_weights is None else \
            (parts.ce_BS * token_weights).sum() / token_weights.to(parts.ce_BS).sum()
        means = [next_token, parts.ce_BS.mean(), parts.kl_BS.mean()]
        names = [NEXT_TOKEN_LOSS, "codistill/ce", "codistill/kl"]
        if parts.signals is not None:
            means += [s.mean() for s in parts.signals]
            names += ["codistill/teacher_confidence", "codistill/label_hardness", "codistill/student_gap"]
        metrics = dict(zip(names, torch.stack(means).tolist()))
        metrics.update({f"codistill/soft_weight_{key}": value for key, value in weight.items()})
        return parts.loss, metrics


def make_objective(config: CodistillConfig, total_steps: int) -> CodistillObjective:
    """The training objective ``config`` describes, over a run of ``total_steps`` steps (the schedule's length)."""
    return CodistillObjective(config, total_steps)
