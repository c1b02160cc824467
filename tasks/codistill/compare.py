"""Students with and without co-distillation at equal steps: held-out next-token loss, a table, MLflow.

    python -m tasks.codistill.compare --tokens .herd/artifacts/tokenizer/<hash> --teacher .herd/artifacts/pretrain/behemoth/<hash>
    python -m tasks.codistill.compare --tokens URI --teacher-steps 300 --steps 100 --seeds 3     # trains its own teacher
    python -m tasks.codistill.compare --tokens URI --teacher URI --schemes none dynamic --set temperature=2

For each seed every scheme trains the same student (``--student``, nano: the Scout-shaped
preset) from the same initialisation on the same batches for the same steps; only the
objective differs (``none`` is plain next-token loss). The held-out set is the last token
shard, whose windows are left out of training; its mean next-token cross-entropy is the
measure. Teacher targets come from a cache of the teacher's top-k over every training
window, built once and read by every student and seed (``--teacher-source online`` runs the
teacher each step instead). The teacher given by ``--teacher`` should not have trained on
the held-out shard (a pipeline ``behemoth.pretrain`` did: it saw every shard); with
``--teacher-steps N`` the command trains one on the training shards only. The table goes
to stdout and, with the weight-distribution plot per scheme, to an MLflow run named
``codistill-compare`` (nested in a pipeline's parent run with ``--run``). On two CPU cores
a nano student of 100 steps takes about half a minute, the teacher cache (every window of
the UDHR subset, nano_behemoth) a couple of minutes, and ``--teacher-steps 300`` most of an
hour on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from herd.config import parse_override
from herd.model import ModelConfig, model_preset
from herd.pipeline import load_config
from herd.stages.codistill import CodistillConfig
from herd.stages.pretrain import PretrainConfig
from tasks.codistill.cache import build_cache
from tasks.model.artifacts import load_model, model_files, tokenizer_files
from tasks.model.llama4 import Llama4
from tasks.training.distill.objective import WeightLog, make_objective
from tasks.training.distill.teachers import CachedTeacherWindows, KeyedWindows, OnlineTeacherWindows, TeacherCache
from tasks.training.loop import new_model, train

log = logging.getLogger(__name__)

SCHEMES = ("none", "fixed", "scheduled", "dynamic")


@dataclass
class Comparison:
    heldout_shards: tuple[int, ...]
    teacher_heldout: float
    losses: dict[str, dict[int, float]] = field(default_factory=dict)  # scheme -> seed -> held-out loss
    weight_logs: dict[str, WeightLog] = field(default_factory=dict)  # scheme -> the first seed's weights
    train_curves: dict[str, dict[int, list[tuple[int, float]]]] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One row per scheme: held-out loss per seed, mean, std, and the paired difference to ``none``."""
        rows = []
        for scheme, by_seed in self.losses.items():
            seeds = sorted(by_seed)
            values = [by_seed[s] for s in seeds]
            row = {"scheme": scheme, **{f"seed{s}": round(by_seed[s], 4) for s in seeds},
                   "mean": round(statistics.fmean(values), 4),
                   "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
            if "none" in self.losses:
                deltas = [by_seed[s] - self.losses["none"][s] for s in seeds]
                row["delta_vs_none"] = round(statistics.fmean(deltas), 4)
                row["delta_std"] = round(statistics.stdev(deltas), 4) if len(deltas) > 1 else 0.0
            rows.append(row)
        return rows


@torch.no_grad()
def heldout_loss(model: Llama4, tokens_dir: Path, seq_len: int, shards: tuple[int, ...], limit: int | None = None,
                 batch: int = 16) -> float:
    """Mean next-token cross-entropy over the windows of ``shards`` (the first ``limit`` of them when given)."""
    windows = KeyedWindows(tokens_dir, seq_len, 1, 0)
    chosen = windows.windows[np.isin(windows.windows[:, 0], list(shards))][:limit]
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for first in range(0, len(chosen), batch):
        rows = np.stack([np.asarray(windows.tokens[shard][start : start + seq_len + 1], dtype=np.int64)
                         for shard, start in chosen[first : first + batch]])
        tokens = torch.from_numpy(rows).to(device)
        logits = model(tokens[:, :-1]).logits.float()
        total += F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum").item()
        count += tokens[:, 1:].numel()
    model.train()
    return total / count


def last_shard(tokens_dir: Path) -> tuple[int, ...]:
    index = json.loads((tokens_dir / "index.json").read_text())
    if len(index["shards"]) < 2:
        raise ValueError(f"{tokens_dir} has {len(index['shards'])} token shard: the held-out set needs a second")
    return (len(index["shards"]) - 1,)


def train_teacher(tokens_dir: Path, model_config: ModelConfig, config: PretrainConfig,
                  heldout: tuple[int, ...], scratch: Path) -> Llama4:
    """A teacher trained on the training shards only, so the held-out set is new to it as well."""
    teacher = new_model(model_config, config)
    windows = KeyedWindows(tokens_dir, config.seq_len, config.batch_size, config.seed, exclude_shards=heldout)
    train(teacher, config, windows, scratch / "teacher", lambda step, metrics: None, label="teacher")
    return teacher.eval()


def compare(tokens_dir: Path, teacher: Llama4, student_config: ModelConfig, pretrain: PretrainConfig,
            codistill: CodistillConfig, schemes: tuple[str, ...], seeds: list[int], scratch: Path,
            heldout_windows: int | None = None,
            on_metrics=lambda scheme, seed, step, metrics: None) -> Comparison:
    """Train one student per (scheme, seed) for ``pretrain.steps`` steps; their held-out losses.

    The held-out set is the last token shard's windows (its first ``heldout_windows`` when given).
    """
    heldout = last_shard(tokens_dir)
    teacher.eval()
    result = Comparison(heldout, heldout_loss(teacher, tokens_dir, pretrain.seq_len, heldout, heldout_windows))
    cache = None
    if codistill.teacher_source == "cache" and any(s != "none" for s in schemes):
        # The windows the students' runs read, not every window: one teacher forward per window used.
        build_cache(teacher, tokens_dir, pretrain.seq_len, codistill.top_k, scratch / "teacher-cache",
                    pretrain.steps, pretrain.batch_size, tuple(seeds), forward_batch=codistill.cache_batch_size,
                    exclude_shards=heldout)
        cache = TeacherCache(scratch / "teacher-cache")
    for seed in seeds:
        config = pretrain.model_copy(update={"seed": seed})
        for scheme in schemes:
            if cache is not None and scheme != "none":
                batches = CachedTeacherWindows(tokens_dir, config.seq_len, config.batch_size, seed, cache, heldout)
            else:
                batches = KeyedWindows(tokens_dir, config.seq_len, config.batch_size, seed, heldout)
                if scheme != "none":
                    batches = OnlineTeacherWindows(batches, teacher)
            objective = make_objective(codistill.model_copy(update={"scheme": scheme}), config.steps)
            student = new_model(student_config, config)
            curve: list[tuple[int, float]] = []

            def metrics_of(step: int, metrics: dict, scheme=scheme, seed=seed, curve=curve) -> None:
                curve.append((step, metrics["codistill/ce"]))
                on_metrics(scheme, seed, step, metrics)

            train(student, config, batches, scratch / f"{scheme}-seed{seed}", metrics_of, objective=objective,
                  label=f"{scheme}/seed{seed}")
            loss = heldout_loss(student, tokens_dir, config.seq_len, heldout, heldout_windows)
            result.losses.setdefault(scheme, {})[seed] = loss
            result.train_curves.setdefault(scheme, {})[seed] = curve
            result.weight_logs.setdefault(scheme, objective.weight_log)
            log.info("%s seed %d: held-out loss %.4f", scheme, seed, loss)
    return result


def format_table(comparison: Comparison) -> str:
    rows = comparison.rows()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
    lines += [" | ".join(str(row.get(c, "")) for c in columns) for row in rows]
    lines.append(f"teacher held-out loss: {comparison.teacher_heldout:.4f} (held-out shards {comparison.heldout_shards})")
    return "\n".join(lines)


def _log_to_mlflow(comparison: Comparison, params: dict, run_id: str | None, scratch: Path) -> str:
    from tasks.runtime import tracking
    from tasks.runtime.reports import write_csv

    client = tracking.client()
    tags = {tracking.KIND_TAG: "comparison"}
    if run_id:
        tags |= {"mlflow.parentRunId": tracking.ensure_parent(client, run_id), tracking.RUN_TAG: run_id}
    run = tracking.StageRun(client, client.create_run(tracking.experiment_id(client), run_name="codistill-compare",
                                                      tags=tags).info.run_id)
    run.log_params(params)
    metrics = {"teacher_heldout_loss": comparison.teacher_heldout}
    for row in comparison.rows():
        metrics[f"heldout_loss/{row['scheme']}"] = row["mean"]
        if "delta_vs_none" in row and row["scheme"] != "none":
            metrics[f"delta_vs_none/{row['scheme']}"] = row["delta_vs_none"]
    for scheme, by_seed in comparison.losses.items():
        metrics.update({f"heldout_loss/{scheme}/seed{seed}": loss for seed, loss in by_seed.items()})
    run.log_metrics(metrics)
    for scheme, by_seed in comparison.train_curves.items():
        for seed, curve in by_seed.items():
            for step, ce in curve:
                run.log_metrics({f"train_ce/{scheme}/seed{seed}": ce}, step=step)
    run.log_artifact(write_csv(scratch / "codistill_compare.csv", comparison.rows()), "reports")

    def bars(figure) -> None:
        axes = figure.add_subplot()
        rows = comparison.rows()
        axes.bar([r["scheme"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=4)
        axes.axhline(comparison.teacher_heldout, color="grey", linestyle="--", label="teacher")
        low = min([r["mean"] - r["std"] for r in rows] + [comparison.teacher_heldout])
        axes.set_ylim(low - 0.1, max(r["mean"] + r["std"] for r in rows) + 0.1)
        axes.set_ylabel("held-out next-token loss")
        axes.set_title(f"Students at equal steps ({params['steps']}), mean and std over {params['seeds']} seeds")
        axes.legend()

    run.log_plot("heldout_loss.png", bars)
    for scheme, weights in comparison.weight_logs.items():
        if scheme != "none":
            run.log_plot(f"soft_weight_{scheme}.png", weights.draw)
    run.end("FINISHED")
    return run.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.codistill.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", required=True, help="a tokenizer stage output (folder, file:// or s3://)")
    teacher_from = parser.add_mutually_exclusive_group(required=True)
    teacher_from.add_argument("--teacher", help="a model stage output (pretrain of behemoth), the teacher")
    teacher_from.add_argument("--teacher-steps", type=int, help="train a teacher for this many steps instead")
    parser.add_argument("--teacher-model", default="nano_behemoth", help="model preset of a trained teacher")
    parser.add_argument("--student", default="nano", help="model preset of the students")
    parser.add_argument("--steps", type=int, default=100, help="training steps of every student")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1: initialisation and data order")
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--heldout-windows", type=int, default=None,
                        help="evaluate on the first N windows of the held-out shard (default: all)")
    parser.add_argument("--lr", type=float, default=None, help="peak LR of the students (default: nano pretrain's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="a codistill field, e.g. temperature=2 or teacher_source=online (repeatable)")
    parser.add_argument("--run", default="", help="a pipeline run id: nest the MLflow run under its parent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from tasks.runtime import storage

    overrides = dict(parse_override(text) for text in args.sets)
    codistill = CodistillConfig(**{k.removeprefix("codistill."): v for k, v in overrides.items()})
    base = load_config("nano").pretrain
    updates = {"seq_len": args.seq_len, "batch_size": args.batch_size, "steps": args.steps,
               "warmup_steps": max(1, min(base.warmup_steps, args.steps // 10)),
               "checkpoint_every": args.steps, "log_every": max(1, args.steps // 20)}
    pretrain = PretrainConfig(**{**base.model_dump(), **updates, **({"lr": args.lr} if args.lr else {})})
    with tempfile.TemporaryDirectory(prefix="herd-codistill-compare-") as tmp:
        scratch = Path(tmp)
        tokenizer_dir = storage.localize(args.tokens, scratch / "tokenizer", tokenizer_files)
        tokens_dir = tokenizer_dir / "tokens"
        vocab = json.loads((tokens_dir / "index.json").read_text())["vocab_size"]

        def sized(preset: str) -> ModelConfig:
            config = model_preset(preset)
            return config.model_copy(update={"vocab_size": vocab, "max_seq_len": max(config.max_seq_len, args.seq_len)})

        if args.teacher:
            teacher = load_model(storage.localize(args.teacher, scratch / "teacher-model", model_files),
                                 max_seq_len=args.seq_len)
            teacher_desc = args.teacher
        else:
            teacher_config = pretrain.model_copy(update={"steps": args.teacher_steps, "seed": 1000,
                                                         "checkpoint_every": args.teacher_steps,
                                                         "log_every": args.teacher_steps})
            teacher = train_teacher(tokens_dir, sized(args.teacher_model), teacher_config, last_shard(tokens_dir),
                                    scratch)
            teacher_desc = f"{args.teacher_model}, {args.teacher_steps} steps on the training shards"
        comparison = compare(tokens_dir, teacher, sized(args.student), pretrain, codistill, tuple(args.schemes),
                             list(range(args.seeds)), scratch, args.heldout_windows)
        print(format_table(comparison), flush=True)
        params = {"tokens": args.tokens, "teacher": teacher_desc, "student": args.student, "steps": args.steps,
                  "seeds": args.seeds, "seq_len": args.seq_len, "batch_size": args.batch_size, "lr": pretrain.lr,
                  "heldout_shards": list(comparison.heldout_shards), "heldout_windows": args.heldout_windows or "all",
                  **{f"codistill.{k}": v for k, v in codistill.model_dump().items()}}
        run_id = _log_to_mlflow(comparison, params, args.run or None, scratch)
        print(f"MLflow run codistill-compare: {run_id}")


if __name__ == "__main__":
    main()
