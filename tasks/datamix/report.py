"""The datamix report: per-language table, drop counts, and their plots, on disk and in MLflow."""

from __future__ import annotations

from collections import Counter

from herd.stages.datamix import DatamixConfig
from tasks.runtime.reports import log_csv


def log_reports(ctx, rows: list[dict], drops: Counter, config: DatamixConfig) -> None:
    log_csv(ctx, "languages.csv", rows)
    log_csv(ctx, "drops.csv", [{"reason": r, "docs": n} for r, n in sorted(drops.items())])

    in_mix = sorted((r for r in rows if r["tokens_actual"] > 0), key=lambda r: -r["tokens_actual"])

    def coverage(figure):
        axes = figure.add_subplot()
        axes.bar(range(len(in_mix)), [r["tokens_actual"] for r in in_mix], width=1.0, color="#4c72b0", label="in the mix")
        axes.plot(range(len(in_mix)), [r["tokens_available"] for r in in_mix], color="#dd8452", lw=1, label="available (deduplicated)")
        axes.axhline(config.report_token_floor, color="#c44e52", ls="--", lw=1, label=f"report floor {config.report_token_floor:,}")
        axes.set_yscale("log")
        axes.set_xlabel(f"{len(in_mix)} languages, by tokens in the mix")
        axes.set_ylabel("estimated tokens")
        step = max(1, len(in_mix) // 40)
        axes.set_xticks(range(0, len(in_mix), step), [r["lang"] for r in in_mix[::step]], rotation=90, fontsize=7)
        axes.set_title("Language coverage of the mix")
        axes.legend()
        figure.tight_layout()

    def drop_bars(figure):
        axes = figure.add_subplot()
        reasons = sorted(drops, key=lambda r: -drops[r])
        axes.barh(reasons, [drops[r] for r in reasons], color="#55a868")
        axes.set_xlabel("documents dropped")
        axes.set_title("Drops by reason")
        figure.tight_layout()

    ctx.tracker.log_plot("language_coverage.png", coverage)
    ctx.tracker.log_plot("drops.png", drop_bars)
