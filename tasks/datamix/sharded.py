"""Running the map-reduce first pass in one stage process (maps, then reducers, in a process pool).

The DAG runs the same steps as Airflow mapped tasks instead (``herd datamix map`` per shard,
``herd datamix reduce`` per partition, :mod:`tasks.datamix.cli`); the stage then finds every
map and reduce output complete and only merges, budgets and mixes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from herd.stages.datamix import DatamixConfig
from tasks.datamix.budget import estimate_tokens
from tasks.datamix.documents import input_files
from tasks.datamix.mapreduce import doc_offsets, map_shard, merge, plan, read_counts, reduce_band
from tasks.datamix.tally import FirstPass, LanguageTally
from tasks.runtime import storage
from tasks.runtime.parallel import worker_count

log = logging.getLogger(__name__)


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def partitions_of(config: DatamixConfig) -> int:
    return max(1, config.dedup_partitions)


def first_pass_sharded(corpus: str, config: DatamixConfig, root: str, scratch: Path) -> FirstPass:
    """Map every input file, reduce every partition, merge: the survivors the single process writes."""
    shards = [entry.uri for entry in input_files(corpus)]
    partitions, workers = partitions_of(config), min(worker_count(config.workers), len(shards))
    clock = time.monotonic()
    with _pool(workers) as pool:
        maps = list(pool.map(map_shard, shards, [config] * len(shards), [root] * len(shards),
                             [partitions] * len(shards)))
        map_seconds = time.monotonic() - clock
        outputs = [m.uri for m in maps]
        reduces = list(pool.map(reduce_band, [outputs] * partitions, range(partitions),
                                [partitions] * partitions, [root] * partitions))
    reduce_seconds = time.monotonic() - clock - map_seconds
    log.info("datamix: %d shard(s) mapped (%d reused) in %.1fs, %d partition(s) reduced in %.1fs",
             len(maps), sum(m.reused for m in maps), map_seconds, partitions, reduce_seconds)
    first = collect(outputs, reduces, config, scratch)
    first.extra_metrics.update({
        "shards": len(maps), "shards_reused": sum(m.reused for m in maps), "dedup_partitions": partitions,
        "map_seconds": round(map_seconds, 3), "reduce_seconds": round(reduce_seconds, 3),
    })
    return first


def collect(map_outputs: list[str], reduce_outputs: list[str], config: DatamixConfig, scratch: Path) -> FirstPass:
    """Merge the reducers' edges and write the survivors, shard by shard in input order."""
    offsets = doc_offsets(map_outputs)
    dups = merge(reduce_outputs, int(offsets[-1]), config.exact_dedup)
    tallies: dict[str, LanguageTally] = defaultdict(LanguageTally)
    drops, stats = Counter(), Counter()
    docs_in = bytes_in = 0
    survivors = scratch / "survivors.jsonl"
    with survivors.open("w", encoding="utf-8") as out:
        for index, uri in enumerate(map_outputs):
            counts = read_counts(uri)
            docs_in += counts["docs_in"]
            bytes_in += counts["bytes_in"]
            drops.update(counts["drops"])
            stats.update(counts["stats"])
            for lang, n in counts["dropped_by_language"].items():
                tallies[lang].dropped += n
            with storage.open_read(storage.join(uri, "docs.jsonl")) as lines:
                for position, line in enumerate(lines, start=int(offsets[index])):
                    doc = json.loads(line)
                    if dups.exact[position] or dups.near[position]:
                        drops["exact_duplicate" if dups.exact[position] else "near_duplicate"] += 1
                        tallies[doc["lang"]].dropped += 1
                        continue
                    tallies[doc["lang"]].docs += 1
                    tallies[doc["lang"]].tokens += estimate_tokens(doc["text"], config.bytes_per_token)
                    out.write(line.decode("utf-8") if isinstance(line, bytes) else line)
    for reason in ("exact_duplicate", "near_duplicate"):
        drops.setdefault(reason, 0)  # the single process counts both even when zero
    extra = {"near_duplicate_clusters": dups.clusters, "largest_near_duplicate_cluster": dups.largest_cluster}
    return FirstPass(survivors, dict(tallies), drops, stats, docs_in, bytes_in, dups.edge_bytes, extra)


def describe_plan(corpus: str, config: DatamixConfig, root: str) -> str:
    """What a sharded run would compute, for ``herd plan``: map outputs are keyed by shard content."""
    found = plan(corpus, config, root, partitions_of(config))
    return (f"map-reduce: {len(found.shards)} shard(s), {found.new} to map, {len(found.shards) - found.new} reused "
            f"by content hash; then {partitions_of(config)} reducer(s) and the mix")
