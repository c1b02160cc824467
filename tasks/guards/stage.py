"""Stage ``guards``: build the guards' data from a seed, train the output and the prompt guard, measure them.

    herd stage guards --run r1 [--in cyberseceval=URI]
    herd stage guards --run r1 --config nano --set guards.examples=2000      # CPU: about half a minute

No model input: the guards read text, not token ids, so they are trained once per pipeline and
every variant's ``safety`` stage reads the same artifact. Data: :mod:`tasks.guards.data`
(deterministic from ``guards.seed``); models: :mod:`tasks.guards.model`.

Evaluation, in ``reports/guard_metrics.csv`` and the summary as ``<guard>_<set>_<class>_<stat>``:

- ``test``: the built held-out split (combinations of intents, templates and payloads never seen in
  training). Output guard classes ``unsafe``, ``safe``, ``refusal``, ``categories_exact`` (share of
  unsafe items given exactly their categories); prompt guard ``benign``, ``injection``,
  ``jailbreak`` and ``malicious`` (either of the last two).
- ``cse``: CyberSecEval prompts no guard was trained on (from the ``cyberseceval`` input; skipped,
  with the reason in ``cse_skipped``, when it is absent). Prompt guard: prompt-injection
  ``user_input`` (label injection) with MITRE FRR prompts (benign-but-borderline, label benign).
  Output guard, assessing user prompts: code-interpreter abuse prompts (unsafe, S14) with the
  same MITRE FRR prompts (safe).

- ``replies``: the output guard's ``comply`` output on hand-written replies in ten languages
  (:mod:`tasks.guards.replies`): ``complies``/``declines`` P/R/F1 and ``complies`` recall per
  language. Under ``guards.min_comply_f1`` the guard is not fit to judge (``judge_fitness`` in
  its ``guard.json``; ``output_guard_fit_to_judge`` in the summary).

Outputs: ``output_guard/``, ``prompt_guard/`` (``model.safetensors``, ``guard.json``), the built
test splits in ``data/*.jsonl``, ``reports/guard_metrics.csv``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from herd.stages.safety import GuardsConfig
from tasks.guards.data import output_guard_examples, prompt_guard_examples
from tasks.guards.model import (
    OUTPUT_GUARD,
    PROMPT_GUARD,
    evaluate_output_guard,
    evaluate_prompt_guard,
    train_output_guard,
    train_prompt_guard,
)
from tasks.guards.replies import evaluate_comply, judge_fitness, read_replies
from tasks.redteam.datasets import locate_datasets, read_dataset
from tasks.runtime.context import StageContext
from tasks.runtime.reports import log_csv

log = logging.getLogger(__name__)

HELDOUT = ("prompt-injection", "mitre-frr", "interpreter")


def heldout_sets(folder: str | None, files: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The CyberSecEval prompts used as held-out data, by benchmark, and the benchmarks that are not there."""
    found, skipped = locate_datasets(folder, files, list(HELDOUT))
    texts = {}
    for benchmark, uri in found.items():
        field = "user_input" if benchmark == "prompt-injection" else "mutated_prompt"
        texts[benchmark] = [case.fields[field] for case in read_dataset(benchmark, uri).cases]
    return texts, skipped


def _flatten(guard: str, split: str, rows: list[dict]) -> dict[str, float]:
    return {f"{guard}_{split}_{row['class']}_{stat}": row[stat] for row in rows
            for stat in ("precision", "recall", "f1") if stat in row}


def _write_jsonl(path: Path, examples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(asdict(example), ensure_ascii=False) + "\n")


def run(ctx: StageContext[GuardsConfig]) -> dict:
    config = ctx.config
    started = time.monotonic()
    out_train, out_test = output_guard_examples(config.examples, config.test_share, config.seed)
    prompt_train, prompt_test = prompt_guard_examples(config.examples, config.test_share, config.seed)
    settings = {"buckets": config.buckets, "char_ngrams": config.char_ngrams, "epochs": config.epochs, "lr": config.lr,
                "batch_size": config.batch_size, "seed": config.seed}
    output_guard, output_losses = train_output_guard(out_train, threshold=config.threshold, **settings)
    prompt_guard, prompt_losses = train_prompt_guard(prompt_train, **settings)
    log.info("guards: trained on %d + %d examples in %.1f s (final losses %.4f, %.4f)", len(out_train),
             len(prompt_train), time.monotonic() - started, output_losses[-1], prompt_losses[-1])
    for epoch, (a, b) in enumerate(zip(output_losses, prompt_losses)):
        ctx.tracker.log_metrics({"output_guard_loss": a, "prompt_guard_loss": b}, step=epoch)

    rows = {(OUTPUT_GUARD, "test"): evaluate_output_guard(output_guard, [e.prompt for e in out_test],
                                                          [e.response for e in out_test],
                                                          [e.categories for e in out_test],
                                                          [e.refusal for e in out_test]),
            (PROMPT_GUARD, "test"): evaluate_prompt_guard(prompt_guard, [e.text for e in prompt_test],
                                                          [e.label for e in prompt_test])}
    texts, skipped = heldout_sets(ctx.inputs.get("cyberseceval"), ctx.pipeline.safety.datasets)
    benign = texts.get("mitre-frr", [])
    if "prompt-injection" in texts:
        injections = texts["prompt-injection"]
        rows[(PROMPT_GUARD, "cse")] = evaluate_prompt_guard(prompt_guard, injections + benign,
                                                            ["injection"] * len(injections) + ["benign"] * len(benign))
    if "interpreter" in texts:
        abuse = texts["interpreter"]
        rows[(OUTPUT_GUARD, "cse")] = evaluate_output_guard(output_guard, abuse + benign, [None] * (len(abuse) + len(benign)),
                                                            [("S14",)] * len(abuse) + [()] * len(benign))
    for benchmark, reason in skipped.items():
        log.warning("guards: held-out %s skipped: %s", benchmark, reason)
    rows[(OUTPUT_GUARD, "replies")] = evaluate_comply(output_guard, read_replies())
    output_guard.judge_fitness = judge_fitness(rows[(OUTPUT_GUARD, "replies")], config.min_comply_f1)
    if not output_guard.fit_to_judge:
        log.warning("guards: the output guard's comply F1 on the labelled replies is %.2f, under %.2f: it is not fit "
                    "to judge, and a gate will not read figures it judged", output_guard.judge_fitness["comply_f1"],
                    config.min_comply_f1)

    metrics: dict[str, float] = {}
    table = []
    for (guard, split), found in rows.items():
        metrics.update(_flatten(guard, split, found))
        table += [{"guard": guard, "set": split, **row} for row in found]
        for row in found:
            log.info("guards: %-12s %-4s %-16s P %s R %s (n=%s)", guard, split, row["class"], row.get("precision", "-"),
                     row.get("recall", "-"), row.get("support"))
    output_guard.save(ctx.workdir / OUTPUT_GUARD, {k: v for k, v in metrics.items() if k.startswith(OUTPUT_GUARD)})
    prompt_guard.save(ctx.workdir / PROMPT_GUARD, {k: v for k, v in metrics.items() if k.startswith(PROMPT_GUARD)})
    _write_jsonl(ctx.workdir / "data" / "output_guard_test.jsonl", out_test)
    _write_jsonl(ctx.workdir / "data" / "prompt_guard_test.jsonl", prompt_test)
    log_csv(ctx, "guard_metrics.csv", table)
    ctx.tracker.log_metrics(metrics)
    return {"examples_train": len(out_train) + len(prompt_train), "examples_test": len(out_test) + len(prompt_test),
            "cse_skipped": skipped, "seconds": round(time.monotonic() - started, 1),
            "output_guard_fit_to_judge": output_guard.fit_to_judge, **metrics}
