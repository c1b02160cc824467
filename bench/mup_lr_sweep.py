"""µP learning-rate transfer: final loss against learning rate at several widths, logged to MLflow.

    .venv/bin/python bench/mup_lr_sweep.py --tokens .herd/artifacts/tokenizer/<hash>
    .venv/bin/python bench/mup_lr_sweep.py --tokens ... --widths 128 256 512 --lrs 1e-3 3e-3 1e-2 3e-2 --steps 40

Each width w trains the nano recipe widened as a whole: model width w, w/64 heads of 64,
experts 2w wide and dense FFNs 4w (nano's ratios), so every hidden matrix's fan-in grows.
The narrowest is the tuned proxy: ``pretrain.mup_base_*`` are its widths, and µP scales
each matrix by its own fan-in's growth. Under µP the best learning rate should be the same
at every width (the curves' minima line up); ``--standard`` runs the same sweep without µP
for comparison, where the best LR usually moves as the width grows. The plot and the table
go to an MLflow run named ``mup-lr-sweep`` in the ``herd`` experiment.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def widened(width: int, vocab_size: int):
    """Nano at model width ``width``, its attention, expert and dense FFN widths in nano's ratios to it."""
    from herd.model import nano

    base = nano()
    heads = width // base.head_dim
    return base.model_copy(update={"dim": width, "n_heads": heads, "n_kv_heads": min(base.n_kv_heads, heads),
                                   "ffn_dim": width * base.ffn_dim // base.dim,
                                   "dense_ffn_dim": width * base.dense_ffn_dim // base.dim, "vocab_size": vocab_size})


def final_loss(tokens: Path, width: int, lr: float, steps: int, base: int | None) -> float:
    from herd.pipeline import load_config
    from tasks.training.data import TokenWindows
    from tasks.training.loop import new_model, train
    from tasks.training.optim import width_mult

    index = json.loads((tokens / "tokens" / "index.json").read_text())
    model_config = widened(width, index["vocab_size"])
    overrides = {"pretrain.lr": lr, "pretrain.steps": steps, "pretrain.seq_len": 128, "pretrain.batch_size": 4,
                 "pretrain.warmup_steps": max(1, steps // 10), "pretrain.checkpoint_every": steps + 1,
                 "pretrain.log_every": steps}
    if base is not None:
        proxy = widened(base, index["vocab_size"])
        overrides |= {"pretrain.mup_base_dim": proxy.dim,
                      "pretrain.mup_base_attention_dim": proxy.n_heads * proxy.head_dim,
                      "pretrain.mup_base_ffn_dim": proxy.ffn_dim,
                      "pretrain.mup_base_dense_ffn_dim": proxy.dense_ffn_dim}
    config = load_config("nano", overrides).pretrain
    with tempfile.TemporaryDirectory() as tmp:
        batches = TokenWindows(tokens / "tokens", config.seq_len, config.batch_size, config.seed)
        history = train(new_model(model_config, config), config, batches, Path(tmp), lambda step, metrics: None,
                        mult=width_mult(model_config, config))
    return sum(history.losses[-5:]) / len(history.losses[-5:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", required=True, type=Path, help="a tokenizer stage output (local folder)")
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 512],
                        help="multiples of 64; the narrowest is the proxy")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--standard", action="store_true", help="standard parametrisation instead of µP")
    args = parser.parse_args()
    if any(width % 64 for width in args.widths):
        parser.error(f"--widths must be multiples of the head width 64, got {args.widths}")
    base = None if args.standard else min(args.widths)
    rows = []
    for width in args.widths:
        for lr in args.lrs:
            loss = final_loss(args.tokens, width, lr, args.steps, base)
            rows.append({"width": width, "lr": lr, "final_loss": round(loss, 4)})
            print(f"width {width:>5}  lr {lr:<8g} loss {loss:.4f}", flush=True)
    best = {w: min((r for r in rows if r["width"] == w), key=lambda r: r["final_loss"])["lr"] for w in args.widths}
    print("best LR per width:", best)

    from tasks.runtime import tracking

    client = tracking.client()
    run = tracking.StageRun(client, client.create_run(tracking.experiment_id(client), run_name="mup-lr-sweep",
                                                      tags={"herd.kind": "sweep"}).info.run_id)
    run.log_params({"widths": args.widths, "lrs": args.lrs, "steps": args.steps,
                    "parametrisation": "standard" if args.standard else f"muP by fan-in, base width {base}"})
    run.log_metrics({f"best_lr/width{w}": lr for w, lr in best.items()})

    def draw(figure):
        axes = figure.add_subplot()
        for width in args.widths:
            points = [r for r in rows if r["width"] == width]
            axes.plot([r["lr"] for r in points], [r["final_loss"] for r in points], marker="o", label=f"width {width}")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel(f"loss after {args.steps} steps")
        axes.set_title("standard parametrisation" if args.standard else f"µP by fan-in (base width {base})")
        axes.legend()

    run.log_plot("loss_vs_lr.png", draw)
    out = REPO / "bench" / "out" / ("sp_lr_sweep.json" if args.standard else "mup_lr_sweep.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "best_lr": best}, indent=2))
    run.end("FINISHED")


if __name__ == "__main__":
    main()
