"""Stage ``tokenizer``: a byte-level BPE trained on a language-balanced sample of the mix,
with Llama 4's special tokens and chat template, then the mix as packed token shards.

    herd stage tokenizer --run demo --config nano --in mix=.herd/artifacts/datamix/<hash>

Outputs: ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``
(``transformers.PreTrainedTokenizerFast.from_pretrained(output)`` loads them),
``tokens/`` (see :mod:`tasks.tokenizer.encode`), ``reports/fertility.csv``.

With ``--in base=URI`` (a tokenizer output, or a model output with the tokenizer in its
``hf/``) the tokenizer is that one, not trained: retraining from a champion must keep its
token ids. Only the shards are encoded anew.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer

from herd.stages.tokenizer import TokenizerConfig
from tasks import languages
from tasks.runtime import storage
from tasks.runtime.context import StageContext
from tasks.runtime.reports import log_csv
from tasks.runtime.step import InputError
from tasks.tokenizer.encode import encode_shards
from tasks.tokenizer.train import balanced_sample, save_for_transformers, train_tokenizer

log = logging.getLogger(__name__)


def _local_shards(mix: str, scratch: Path) -> list[Path]:
    folder = storage.localize(mix, scratch, lambda relative: relative == "manifest.json" or relative.startswith("shards/"))
    manifest = json.loads((folder / "manifest.json").read_text())
    return [folder / shard["path"] for shard in manifest["shards"]]


def _docs(paths: list[Path]) -> Iterator[dict]:
    for path in paths:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                yield json.loads(line)


def _fertility(tokenizer, held_out: dict[str, list[str]]) -> list[dict]:
    rows = []
    for lang in sorted(held_out):
        texts = held_out[lang]
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        tokens = sum(len(e.ids) for e in encodings)
        chars = sum(len(t) for t in texts)
        words = sum(len(t.split()) for t in texts)
        meta = languages.info(lang)
        rows.append({
            "lang": lang,
            "name": meta.name,
            "script": meta.script,
            "docs": len(texts),
            "chars": chars,
            "words": words,
            "tokens": tokens,
            "tokens_per_char": round(tokens / max(chars, 1), 4),
            "tokens_per_word": round(tokens / max(words, 1), 4),
        })
    return rows


def _log_fertility(ctx, rows: list[dict]) -> None:
    log_csv(ctx, "fertility.csv", rows)
    ordered = sorted(rows, key=lambda r: r["tokens_per_char"])

    def draw(figure):
        axes = figure.add_subplot()
        axes.bar(range(len(ordered)), [r["tokens_per_char"] for r in ordered], width=1.0, color="#4c72b0")
        step = max(1, len(ordered) // 40)
        axes.set_xticks(range(0, len(ordered), step), [r["lang"] for r in ordered[::step]], rotation=90, fontsize=7)
        axes.set_ylabel("tokens per character")
        axes.set_title(f"Tokenizer fertility on held-out text, {len(ordered)} languages")
        figure.tight_layout()

    ctx.tracker.log_plot("fertility.png", draw)


def _base_tokenizer(uri: str, scratch: Path) -> Tokenizer:
    names = ("tokenizer.json", "hf/tokenizer.json")
    folder = storage.localize(uri, scratch, lambda relative: relative in names)
    found = next((folder / name for name in names if (folder / name).exists()), None)
    if found is None:
        raise InputError(f"base={uri} holds no tokenizer.json (nor hf/tokenizer.json)")
    log.info("tokenizer: keeping the tokenizer of %s", uri)
    return Tokenizer.from_file(str(found))


def run(ctx: StageContext[TokenizerConfig]) -> dict:
    config = ctx.config
    with tempfile.TemporaryDirectory(prefix="herd-tokenizer-") as tmp:
        shards = _local_shards(ctx.inputs["mix"], Path(tmp))
        sample = balanced_sample(_docs(shards), config)
        log.info("tokenizer: training on %d languages, %d characters", len(sample.train), sum(sample.train_chars.values()))
        tokenizer = (_base_tokenizer(ctx.inputs["base"], Path(tmp) / "base") if "base" in ctx.inputs
                     else train_tokenizer(sample, config))
        save_for_transformers(tokenizer, ctx.workdir)
        fertility = _fertility(tokenizer, sample.held_out)
        index = encode_shards(tokenizer, shards, ctx.workdir / "tokens", config.batch_docs)
    _log_fertility(ctx, fertility)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        ctx.tracker.log_artifact(ctx.workdir / name, "tokenizer")
    per_char = [r["tokens_per_char"] for r in fertility]
    metrics = {
        "vocab_size": index["vocab_size"],
        "learned_vocab_size": tokenizer.get_vocab_size(with_added_tokens=False),
        "special_tokens": index["vocab_size"] - tokenizer.get_vocab_size(with_added_tokens=False),
        "train_languages": len(sample.train),
        "train_chars": sum(sample.train_chars.values()),
        "tokens_total": index["num_tokens"],
        "token_languages": len(index["languages"]),
        "fertility_languages": len(fertility),
        "tokens_per_char_median": round(statistics.median(per_char), 4) if per_char else None,
        "tokens_per_char_max": max(per_char) if per_char else None,
    }
    ctx.tracker.log_metrics({k: v for k, v in metrics.items() if v is not None})
    log.info("tokenizer: vocab %d, %d tokens in %d shards", metrics["vocab_size"], metrics["tokens_total"], len(index["shards"]))
    return {**metrics, "base": ctx.inputs.get("base", "")}
