"""Expert load: each expert's share of the routed tokens, averaged over training for the report, and how uneven it
is (coefficient of variation per MoE layer) in the logged metrics; under a capacity, the step's rows past it
(``router/dropped_tokens``, or ``router/over_capacity_tokens`` when the model keeps them)."""

from __future__ import annotations

from tasks.training.callbacks.callback import Callback, Step, Trainer


class ExpertLoad(Callback):
    def post_step(self, trainer: Trainer, step: Step) -> None:
        history = trainer.history
        loads = [(c.float() / c.sum()).tolist() for c in step.expert_counts]
        if history.load_sum is None:
            history.load_sum = [[0.0] * len(layer) for layer in loads]
        for summed, layer in zip(history.load_sum, loads):
            for e, share in enumerate(layer):
                summed[e] += share
        history.load_count += 1
        if step.metrics is not None:
            step.metrics.update({f"expert_load_cv/layer{i}": cv(layer) for i, layer in enumerate(loads)})
            if step.over_capacity is not None:
                kept = trainer.engine.module.config.over_capacity == "keep"
                step.metrics["router/over_capacity_tokens" if kept else "router/dropped_tokens"] = \
                    float(step.over_capacity)


def cv(shares: list[float]) -> float:
    """Coefficient of variation of the expert load: 0 is perfectly balanced."""
    mean = sum(shares) / len(shares)
    return (sum((s - mean) ** 2 for s in shares) / len(shares)) ** 0.5 / mean if mean else 0.0
