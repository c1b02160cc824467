"""Stage ``datamix``: raw corpora -> normalised, language-checked, filtered, deduplicated,
budgeted and shuffled text shards, with a per-language report.

    herd stage datamix --run demo --config nano --in corpus=.herd/corpus/udhr
    herd stage datamix --run demo --config nano --in corpus=s3://bucket/raw/ --set datamix.temperature=5

Three streaming passes keep memory bounded whatever the corpus size: (1) read, check and
filter in worker processes, deduplicate in order, spill survivors to scratch; (2) apply
the per-language budgets, spreading each copy over shard buckets; (3) shuffle each bucket
(one shard's worth) in memory and write it. Outputs: ``shards/mix-*.jsonl``,
``manifest.json``, ``reports/languages.csv``, ``reports/drops.csv``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import resource
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from herd.stages.datamix import DatamixConfig
from tasks import languages
from tasks.datamix.budget import Budget, budgets, copies, estimate_tokens
from tasks.datamix.documents import BatchResult, init_worker, process_batch, read_batches
from tasks.datamix.dedup import SeenKeys
from tasks.datamix.mapreduce import artifact_root
from tasks.datamix.sharded import first_pass_sharded
from tasks.datamix.report import log_reports
from tasks.datamix.tally import FirstPass, LanguageTally
from tasks.runtime.context import StageContext
from tasks.runtime.parallel import ordered_map, worker_count

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 64 << 20  # a shard is shuffled in memory: this bounds the stage's peak RSS
PROGRESS_EVERY_DOCS = 100_000


def _first_pass(corpus: str, config: DatamixConfig, scratch: Path) -> FirstPass:
    survivors = scratch / "survivors.jsonl"
    tallies: dict[str, LanguageTally] = defaultdict(LanguageTally)
    drops: Counter = Counter()
    stats: Counter = Counter()
    exact_seen, near_seen = SeenKeys(), SeenKeys()
    docs_in = bytes_in = 0
    next_report, clock = PROGRESS_EVERY_DOCS, time.monotonic()
    workers = worker_count(config.workers)
    log.info("datamix: reading %s with %d worker(s)", corpus, workers)
    with survivors.open("w", encoding="utf-8") as out:
        results = ordered_map(process_batch, read_batches(corpus, config), workers, init_worker, (config,))
        for result in results:
            result: BatchResult
            docs_in += result.docs_in
            bytes_in += result.bytes_in
            if docs_in >= next_report:
                elapsed = time.monotonic() - clock
                log.info("datamix: %d docs (%.0f MB) read, %.0f docs/s, %.1f MB/s", docs_in, bytes_in / 1e6,
                         docs_in / elapsed, bytes_in / 1e6 / elapsed)
                next_report += PROGRESS_EVERY_DOCS
            drops.update(result.drops)
            stats.update(result.stats)
            for lang, count in result.dropped_by_language.items():
                tallies[lang].dropped += count
            docs = result.documents
            if not docs:
                continue
            exact = np.zeros(len(docs), dtype=bool)
            if config.exact_dedup:
                exact = exact_seen.check_and_add(result.exact_keys)
            near = np.zeros(len(docs), dtype=bool)
            unique = ~exact
            if unique.any():
                near[unique] = near_seen.check_and_add(result.band_keys[unique])
            drops["exact_duplicate"] += int(exact.sum())
            drops["near_duplicate"] += int(near.sum())
            for doc, is_exact, is_near in zip(docs, exact, near):
                if is_exact or is_near:
                    tallies[doc.lang].dropped += 1
                    continue
                tallies[doc.lang].docs += 1
                tallies[doc.lang].tokens += estimate_tokens(doc.text, config.bytes_per_token)
                out.write(json.dumps({"id": doc.id, "lang": doc.lang, "text": doc.text}, ensure_ascii=False) + "\n")
    return FirstPass(survivors, dict(tallies), drops, stats, docs_in, bytes_in, exact_seen.nbytes + near_seen.nbytes)


def _bucket(seed: int, doc_id: str, copy: int, buckets: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{doc_id}:{copy}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def _write_shards(first: FirstPass, plan: dict[str, Budget], config: DatamixConfig, scratch: Path, shard_dir: Path):
    planned_bytes = sum(b.target * config.bytes_per_token for b in plan.values())
    num_shards = max(config.num_shards, math.ceil(planned_bytes / MAX_SHARD_BYTES))
    bucket_paths = [scratch / f"bucket-{i:05d}.jsonl" for i in range(num_shards)]
    actual_tokens: Counter = Counter()
    bucket_files = [p.open("w", encoding="utf-8") for p in bucket_paths]
    try:
        with first.survivors.open(encoding="utf-8") as survivors:
            for line in survivors:
                doc = json.loads(line)
                budget = plan.get(doc["lang"])
                if budget is None:
                    continue
                n = copies(doc["id"], budget.repeat, config.seed)
                tokens = estimate_tokens(doc["text"], config.bytes_per_token)
                for copy in range(n):
                    doc["copy"] = copy
                    bucket_files[_bucket(config.seed, doc["id"], copy, num_shards)].write(
                        json.dumps(doc, ensure_ascii=False) + "\n"
                    )
                    actual_tokens[doc["lang"]] += tokens
    finally:
        for handle in bucket_files:
            handle.close()
    shard_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for index, path in enumerate(bucket_paths):
        # Bytes, not str: multilingual text decoded to str takes two to four times the memory.
        lines = path.read_bytes().splitlines(keepends=True)
        random.Random(config.seed * 1_000_003 + index).shuffle(lines)
        shard = shard_dir / f"mix-{index:05d}.jsonl"
        with shard.open("wb") as handle:
            handle.writelines(lines)
        shards.append({"path": f"shards/{shard.name}", "docs": len(lines), "bytes": shard.stat().st_size})
        path.unlink()
    return shards, actual_tokens


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run(ctx: StageContext[DatamixConfig]) -> dict:
    config = ctx.config
    clock = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="herd-datamix-") as tmp:
        scratch = Path(tmp)
        if config.map_reduce:
            first = first_pass_sharded(ctx.inputs["corpus"], config, artifact_root(ctx.output_uri), scratch)
        else:
            first = _first_pass(ctx.inputs["corpus"], config, scratch)
        read_seconds = time.monotonic() - clock
        plan = budgets({lang: t.tokens for lang, t in first.tallies.items()}, config)
        shards, actual = _write_shards(first, plan, config, scratch, ctx.workdir / "shards")

    rows = []
    for lang in sorted(first.tallies):
        tally, meta = first.tallies[lang], languages.info(lang)
        budget = plan.get(lang)
        rows.append({
            "lang": lang,
            "name": meta.name,
            "script": meta.script,
            "docs_kept": tally.docs,
            "docs_dropped": tally.dropped,
            "tokens_available": tally.tokens,
            "tokens_target": budget.target if budget else 0,
            "tokens_actual": actual.get(lang, 0),
            "repeat": round(budget.repeat, 4) if budget else 0.0,
            "above_floor": actual.get(lang, 0) >= config.report_token_floor,
        })
    in_mix = [r for r in rows if r["tokens_actual"] > 0]
    checked = first.stats.get("label_checked", 0)
    metrics = {
        "docs_in": first.docs_in,
        "bytes_in": first.bytes_in,
        "docs_kept": sum(t.docs for t in first.tallies.values()),
        "docs_out": sum(s["docs"] for s in shards),
        "tokens_out": sum(actual.values()),
        "languages_in_mix": len(in_mix),
        "languages_above_floor": sum(1 for r in rows if r["above_floor"]),
        "lid_label_agreement": round(first.stats.get("label_confirmed", 0) / checked, 4) if checked else None,
        "labels_checked": checked,
        "labels_not_checkable": first.stats.get("label_not_checkable", 0),
        "docs_per_second": round(first.docs_in / max(read_seconds, 1e-9), 1),
        "mb_per_second": round(first.bytes_in / 1e6 / max(read_seconds, 1e-9), 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "dedup_index_mb": round(first.index_bytes / 1e6, 2),
        **first.extra_metrics,
        **{f"dropped_{reason}": count for reason, count in sorted(first.drops.items())},
    }
    manifest = {
        "format": "jsonl",
        "fields": ["id", "lang", "text", "copy"],
        "shards": shards,
        "languages": {r["lang"]: {"docs": r["docs_kept"], "tokens": r["tokens_actual"]} for r in in_mix},
        "drops": dict(sorted(first.drops.items())),
        "token_estimate": f"utf8_bytes / {config.bytes_per_token}",
    }
    (ctx.workdir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    log_reports(ctx, rows, first.drops, config)
    ctx.tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    log.info(
        "datamix: %d docs in, %d kept, %d languages in the mix (%d above the %d-token floor); drops %s",
        metrics["docs_in"], metrics["docs_kept"], metrics["languages_in_mix"], metrics["languages_above_floor"],
        config.report_token_floor, dict(first.drops),
    )
    return metrics
