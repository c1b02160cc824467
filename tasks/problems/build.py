"""Building the problem sets: every generator, the split, and the files the post-training stages read.

    from tasks.problems.build import build_problem_sets
    summary = build_problem_sets(Path(".herd/corpus/udhr/udhr.jsonl"), Path("out"), ProblemsConfig())

Writes ``train.jsonl`` and ``eval.jsonl`` (one :class:`~tasks.problems.item.Problem` a
line, shuffled so that capabilities mix) and ``index.json`` (counts per split, capability
and difficulty; the held-out articles; the config), each to a temporary name first and
renamed, ``index.json`` last. Takes a few seconds on one core for the nano defaults.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from herd.stages.problems import ProblemsConfig
from tasks.problems import arithmetic, code, strings, udhr
from tasks.problems.item import CAPABILITIES, Problem, write_jsonl
from tasks.problems.split import heldout_articles, split_of

INDEX = "index.json"


def generate_all(declarations: dict[str, udhr.Declaration], config: ProblemsConfig) -> list[Problem]:
    seed = config.seed
    english = declarations.get("eng")
    words = re.findall(r"[a-z]+", " ".join(p for ps in english.articles.values() for p in ps)) if english else []
    return [
        *arithmetic.generate(config.count_arithmetic, seed, config.max_operand_digits),
        *strings.generate(config.count_strings, seed, words, config.max_word_length),
        *code.generate(config.count_code, seed, config.code_time_limit_s, config.code_memory_mb,
                      config.allow_unconfined),
        *udhr.translate(declarations, config.translate_languages, config.count_translate, seed, config.max_text_chars),
        *udhr.language_id(declarations, config.languages, config.count_language_id, seed),
        *udhr.continuation(declarations, config.languages, config.count_continue, seed),
    ]


def split_problems(problems: list[Problem], fraction: float, eval_articles: frozenset[str]) -> tuple[list, list, int]:
    """``(train, eval, dropped)``: an eval item whose prompt is also asked in train is dropped, not kept."""
    train = [p for p in problems if split_of(p, fraction, eval_articles) == "train"]
    asked = {p.prompt for p in train}
    held = [p for p in problems if split_of(p, fraction, eval_articles) == "eval"]
    evaluation = [p for p in held if p.prompt not in asked]
    return train, evaluation, len(held) - len(evaluation)


def _counts(problems: list[Problem]) -> dict[str, Any]:
    by_capability: dict[str, Any] = {}
    for capability in CAPABILITIES:
        mine = [p for p in problems if p.capability == capability]
        difficulty = Counter(p.difficulty for p in mine)
        by_capability[capability] = {"total": len(mine), "difficulty": {str(d): difficulty[d] for d in sorted(difficulty)}}
    return {"total": len(problems), "capability": by_capability}


def _write_atomically(path: Path, write) -> None:
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)


def build_problem_sets(udhr_jsonl: Path, out_dir: Path, config: ProblemsConfig) -> dict[str, Any]:
    """Generate, split and write; returns flat metrics (counts per split and capability)."""
    declarations = udhr.load_declarations(Path(udhr_jsonl))
    requested = set(config.languages) | set(config.translate_languages)
    eval_articles = heldout_articles((a for d in declarations.values() for a in d.articles), config.heldout_fraction)
    train, evaluation, dropped = split_problems(generate_all(declarations, config), config.heldout_fraction, eval_articles)
    # Shuffled once, by the seed, so that a reader taking the first N gets every capability.
    random.Random(config.seed).shuffle(train)
    random.Random(config.seed + 1).shuffle(evaluation)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_dir / "train.jsonl", lambda path: write_jsonl(train, path))
    _write_atomically(out_dir / "eval.jsonl", lambda path: write_jsonl(evaluation, path))
    index = {
        "splits": {"train": _counts(train), "eval": _counts(evaluation)},
        "eval_articles": sorted(eval_articles, key=lambda a: (not a.isdigit(), int(a) if a.isdigit() else 0, a)),
        "languages": sorted(declarations),
        "missing_languages": sorted(requested - set(declarations)),
        "dropped_eval_prompt_in_train": dropped,
        "config": config.model_dump(mode="json"),
    }
    _write_atomically(out_dir / INDEX, lambda path: path.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n"))
    summary: dict[str, Any] = {"problems_train": len(train), "problems_eval": len(evaluation),
                               "eval_articles": len(eval_articles), "dropped_eval_prompt_in_train": dropped}
    for split, items in (("train", train), ("eval", evaluation)):
        for capability, count in sorted(Counter(p.capability for p in items).items()):
            summary[f"{split}_{capability}"] = count
    return summary
