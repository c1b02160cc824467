"""Running the map-reduce first pass: in one stage process (maps and reducers in a process
pool), or step by step from an orchestrator's mapped tasks (``python -m tasks.datamix.sharded``).

    python -m tasks.datamix.sharded shards --corpus URI
    python -m tasks.datamix.sharded map --shard URI --root ARTIFACT_ROOT [--config nano --set ...]
    python -m tasks.datamix.sharded reduce --maps URI,URI,... --partition P --root ARTIFACT_ROOT

The DAG maps one task over the shard list, then one over the partitions; the stage itself
(``datamix.map_reduce=true``) finds every map and reduce output complete and only merges,
budgets and mixes. Each step prints the URI it wrote as its last line (what crosses XCom).
"""

from __future__ import annotations

import argparse
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


def _config(args: argparse.Namespace) -> DatamixConfig:
    from herd.config import parse_override
    from herd.pipeline import load_config

    return load_config(args.config, dict(parse_override(o) for o in args.overrides)).datamix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.datamix.sharded", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("shards", "map", "reduce"):
        step = sub.add_parser(name)
        step.add_argument("--config", default="nano")
        step.add_argument("--set", dest="overrides", action="append", default=[], metavar="section.field=VALUE")
        step.add_argument("--root", default="")
    sub.choices["shards"].add_argument("--corpus", required=True)
    sub.choices["map"].add_argument("--shard", required=True)
    sub.choices["reduce"].add_argument("--maps", required=True, help="comma-separated map output URIs, in shard order")
    sub.choices["reduce"].add_argument("--partition", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = _config(args)
    if not args.root:
        from tasks.runtime.home import artifact_root

        args.root = artifact_root()
    if args.step == "shards":
        print(json.dumps([entry.uri for entry in input_files(args.corpus)]))
    elif args.step == "map":
        result = map_shard(args.shard, config, args.root, partitions_of(config))
        log.info("datamix map: %s -> %s (%s)", args.shard, result.uri, "reused" if result.reused else "written")
        print(result.uri)
    else:
        print(reduce_band(args.maps.split(","), args.partition, partitions_of(config), args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
