"""What every training stage reports: tokens per language, expert load, loss and load plots, a summary."""

from __future__ import annotations

from tasks.training.history import History
from tasks.runtime.reports import log_csv


def log_training_reports(ctx, history: History, title: str) -> None:
    total = sum(history.tokens_by_language.values()) or 1
    log_csv(ctx, "tokens_by_language.csv", [
        {"lang": lang, "tokens": count, "share": round(count / total, 6)}
        for lang, count in sorted(history.tokens_by_language.items(), key=lambda kv: -kv[1])
    ])

    def loss_curve(figure):
        axes = figure.add_subplot()
        axes.plot(history.steps, history.losses, label="next-token loss")
        if history.objective_losses:  # co-distillation: the mix with the teacher's KL, which is not the same curve
            axes.plot(history.steps[-len(history.objective_losses):], history.objective_losses,
                      label="objective (next-token loss mixed with the teacher's KL)")
            axes.legend()
        axes.set_xlabel("step")
        axes.set_ylabel("loss" if history.objective_losses else "next-token loss")
        axes.set_title(title)

    ctx.tracker.log_plot("loss.png", loss_curve)
    if not history.load_sum:
        return
    mean_load = [[share / history.load_count for share in layer] for layer in history.load_sum]
    log_csv(ctx, "expert_load.csv", [
        {"moe_layer": i, **{f"expert{e}": round(share, 6) for e, share in enumerate(layer)}}
        for i, layer in enumerate(mean_load)
    ])

    def load_map(figure):
        axes = figure.add_subplot()
        image = axes.imshow(mean_load, aspect="auto", cmap="viridis")
        axes.set_xlabel("expert")
        axes.set_ylabel("MoE layer")
        axes.set_title("Share of routed tokens per expert (mean over training)")
        figure.colorbar(image)

    ctx.tracker.log_plot("expert_load.png", load_map)


def training_summary(history: History) -> dict:
    losses = history.losses
    return {
        "first_loss": round(losses[0], 4) if losses else None,
        "final_loss": round(losses[-1], 4) if losses else None,
        "languages_seen": len(history.tokens_by_language),
        "tokens_per_second": _mean(history.tokens_per_second),
        "mfu": _mean(history.mfu),
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
