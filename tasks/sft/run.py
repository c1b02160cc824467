"""Lightweight SFT end to end: judge, prune, report, train on the rest, measure on the held-out hard set.

    from tasks.model.artifacts import load_model
    student = load_model(Path(".herd/artifacts/midtrain/<hash>"))
    judge = load_model(Path(".herd/artifacts/pretrain/<behemoth hash>"))
    summary, history = run_sft(student, judge, problems_dir, tokenizer_dir, config, config.drop_fraction("scout"),
                               workdir, on_metrics=lambda step, m: print(step, m), log_plot=lambda name, draw: None)

On the CPU with the nano presets (``SFTConfig()`` defaults) this takes minutes; a test-sized
run (tiny model, a few hundred problems, a few steps) takes seconds. ``student`` is trained
in place; the caller writes it with :func:`tasks.model.artifacts.write_model`.

Under ``workdir``: ``judge_scores.json`` (train and eval scores, so a restarted run prunes
exactly as the first one did), ``checkpoints/`` (the pruned run, resumed by the training
loop), ``unpruned/checkpoints/`` (the equal-compute baseline, with ``compare_unpruned``), and
``reports/``: ``sft_pruning.csv`` (kept/dropped per difficulty bucket and capability),
``sft_examples.json`` (examples of each), ``sft_hard_eval.csv`` (the hard set before SFT,
after pruned SFT and after unpruned SFT). The scores are also kept under ``$HERD_HOME/cache``
for the other sft stages that judge the same examples with the same judge (:mod:`tasks.sft.judge_cache`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from herd.stages.sft import SFTConfig
from tasks.model.llama4 import Llama4
from tasks.problems.chat import load_tokenizer
from tasks.problems.item import read_jsonl
from tasks.runtime import storage
from tasks.runtime.reports import write_csv
from tasks.sft.data import Example, render_examples
from tasks.sft.evaluate import arm_row, equal_compute, evaluate, hard_set, train_arm
from tasks.sft.judge import difficulty, prune
from tasks.sft.judge_cache import read_scores, scores_key, write_scores
from tasks.sft.report import hint_agreement, logged_examples, pruning_plot, pruning_rows
from tasks.training.history import History
from tasks.training.optim import WidthMult
from tasks.training.reports import training_summary

log = logging.getLogger(__name__)

SCORES = "judge_scores.json"


def run_sft(student: Llama4, judge: Llama4 | None, problems_dir: Path, tokenizer_dir: Path, config: SFTConfig,
            drop_fraction: float, workdir: Path, on_metrics: Callable[[int, dict], None],
            log_plot: Callable[[str, Callable], None], *, log_artifact: Callable[[Path, str], None] | None = None,
            mult: WidthMult = 1.0, remote: str | None = None) -> tuple[dict, History]:
    """Prune ``problems_dir/train.jsonl`` by ``config.judge`` and fine-tune ``student`` on what is left.

    ``judge`` is the teacher (unused, may be None, for ``student_loss``). ``log_artifact(path,
    folder)`` receives each report file; ``mult`` keeps pretraining's µP learning-rate ratios.
    """
    data = judged_data(student, judge, problems_dir, tokenizer_dir, config, workdir)
    tokenizer, train_examples, scores = data.tokenizer, data.train, data.scores
    kept, dropped = prune(train_examples, scores, drop_fraction, config.min_kept)
    kept_ids = {e.id for e in kept}
    rows = pruning_rows(train_examples, scores, kept_ids, config.buckets)
    reports = workdir / "reports"
    files = [write_csv(reports / "sft_pruning.csv", rows)]
    examples_json = reports / "sft_examples.json"
    examples_json.write_text(json.dumps(logged_examples(train_examples, scores, kept_ids, config.buckets,
                                                        config.examples_to_log), indent=2, ensure_ascii=False))
    files.append(examples_json)
    log_plot("sft_pruning.png", pruning_plot(rows))
    log.info("sft: judge %s kept %d of %d examples (%d dropped, %d too long for %d tokens)", config.judge,
             len(kept), len(train_examples), len(dropped), data.too_long, config.seq_len)

    hard = data.hard
    init = copy.deepcopy(student.state_dict()) if config.compare_unpruned else None
    before = evaluate(student, tokenizer, hard, config)
    history, packed = train_arm(student, kept, tokenizer, config, workdir, on_metrics, remote, mult, label="sft")
    table = [arm_row("before", config.seed, None, None, config, before),
             arm_row("pruned", config.seed, packed, history, config, evaluate(student, tokenizer, hard, config))]
    if init is not None:
        baseline = Llama4(student.config)
        baseline.load_state_dict(init)
        same_compute = equal_compute(config, packed)
        unpruned_history, unpruned_rows = train_arm(
            baseline, train_examples, tokenizer, same_compute, workdir / "unpruned",
            lambda step, metrics: on_metrics(step, {f"unpruned/{k}": v for k, v in metrics.items()}),
            storage.join(remote, "unpruned") if remote else None, mult, label="sft.unpruned")
        table.append(arm_row("unpruned", config.seed, unpruned_rows, unpruned_history, same_compute,
                             evaluate(baseline, tokenizer, hard, config)))
    files.append(write_csv(reports / "sft_hard_eval.csv", table))
    for path in files:
        if log_artifact is not None:
            log_artifact(path, "reports")

    summary = {
        "judge": config.judge,
        "drop_fraction": drop_fraction,
        "train_examples": len(train_examples),
        "kept": len(kept),
        "dropped": len(dropped),
        "too_long": data.too_long,
        "kept_score_min": round(min(s for e, s in zip(train_examples, scores) if e.id in kept_ids), 6),
        "eval_items": len(data.held_out),
        "hard_eval_items": len(hard),
        **{f"{row['arm']}_{k}": v for row in table for k, v in row.items()
           if k in ("hard_loss", "hard_pass1", "hard_reward") or (k == "epochs" and row["arm"] != "before")},
        **{f"judge_hint_spearman/{c}": v for c, v in hint_agreement(train_examples, scores).items()},
        **training_summary(history),
    }
    return summary, history


@dataclass(frozen=True)
class JudgedData:
    """The rendered train and held-out examples, the judge's scores of both, and the hard eval set."""

    tokenizer: object
    train: list[Example]
    scores: list[float]
    held_out: list[Example]
    held_out_scores: list[float]
    hard: list[Example]
    too_long: int  # train problems longer than a row, skipped


def judged_data(student: Llama4, judge: Llama4 | None, problems_dir: Path, tokenizer_dir: Path, config: SFTConfig,
                workdir: Path) -> JudgedData:
    """Render ``train.jsonl`` and the first ``eval_max_items`` of ``eval.jsonl``, and judge them (once per ``workdir``).

    The judge is ``student`` for ``student_loss``, else ``judge`` (the teacher).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_dir)
    judging = student if config.judge == "student_loss" else judge
    if judging is None:
        raise ValueError(f"judge {config.judge!r} needs the teacher model")
    train, too_long = render_examples(tokenizer, read_jsonl(problems_dir / "train.jsonl"), config.seed,
                                      config.seq_len + 1)
    held_out, _ = render_examples(tokenizer, read_jsonl(problems_dir / "eval.jsonl")[: config.eval_max_items],
                                  config.seed, config.seq_len + 1)
    scores, held_out_scores = _judge_scores(workdir / SCORES, config, judging, tokenizer, train, held_out)
    hard = hard_set(held_out, held_out_scores, config.buckets, config.hard_buckets)
    return JudgedData(tokenizer, train, scores, held_out, held_out_scores, hard, too_long)


def _judge_scores(path: Path, config: SFTConfig, judging: Llama4, tokenizer, train_examples: list[Example],
                  held_out: list[Example]) -> tuple[list[float], list[float]]:
    """The judge's scores of train and eval examples, computed once and kept beside the checkpoints.

    Another sft stage that judged the same examples with the same judge and settings may have
    computed them already: :mod:`tasks.sft.judge_cache` has them then.
    """
    if path.exists():
        saved = json.loads(path.read_text())
        try:
            return [saved["train"][e.id] for e in train_examples], [saved["eval"][e.id] for e in held_out]
        except KeyError:
            log.warning("sft: %s does not score these examples; judging again", path)
    examples = train_examples + held_out
    key = scores_key(config, judging, examples)
    scores = read_scores(key, len(examples))
    if scores is None:
        scores = difficulty(config, judging, tokenizer, examples)
        write_scores(key, scores)
    train_scores, eval_scores = scores[: len(train_examples)], scores[len(train_examples):]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"judge": config.judge,
                                   "train": {e.id: s for e, s in zip(train_examples, train_scores)},
                                   "eval": {e.id: s for e, s in zip(held_out, eval_scores)}}))
    os.replace(partial, path)
    return train_scores, eval_scores
