"""The data mix's first pass sharded (map per file, reduce per key partition) against the single process.

How to run (from the repository root):

    .venv/bin/python bench/datamix_sharded.py --gb 0.07            # ~75 MB, 8 files: minutes on 2 cores
    .venv/bin/python bench/datamix_sharded.py --gb 1 --workers 1 2 4

What it does, on the corpus of ``bench/datamix_throughput.py`` (8 JSONL files of UDHR-built
documents with ~3% exact and ~3% near duplicates, generated once under ``bench/out/``):

1. For each worker count: the single-process first pass (``datamix.map_reduce=false``) and the
   sharded one (fresh map and reduce outputs), each in its own child process, so that peak
   memory is that run's. Measured: wall seconds of the whole first pass, of the maps, of the
   reducers and of the merge (edges -> kept set, survivors written in input order); the peak
   RSS of the parent and of the largest worker.
2. Identity: the kept document ids, in order, of every run must be equal, else it exits 1.
3. From the sharded 1-worker rates, the plan for 30T tokens (``--plan-tokens``): shards,
   workers, hours, memory per map worker, and the key bytes a reducer holds per partition.

The figures are this machine's (cores, disk and other jobs all matter). Results go to
``bench/out/datamix_sharded.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from datamix_throughput import OUT, generate_corpus, git_state, machine, udhr_source  # noqa: E402

BYTES_PER_TOKEN = 4.0  # the datamix default: 30T tokens ~ 120 TB of text
SHARD_BYTES = 1 << 30  # a map task's input at the seed's scale: one 1 GiB file
REDUCER_MEMORY_BYTES = 16 << 30  # a reducer's pod; its keys (and their sort) must fit
MAP_HOURS = 24.0  # the wall time the plan aims the map phase at


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def one_run(mode: str, corpus: str, workers: int, ids_out: Path) -> dict:
    """Run in a child process: one first pass, timed; kept ids written to ``ids_out``."""
    from herd.pipeline import load_config
    from tasks.datamix.mapreduce import MAP_DIR
    from tasks.datamix.sharded import first_pass_sharded
    from tasks.datamix.stage import _first_pass

    config = load_config("nano", {"datamix.workers": workers, "datamix.dedup_partitions": 8}).datamix
    with tempfile.TemporaryDirectory(prefix="bench-datamix-") as tmp:
        scratch, root = Path(tmp) / "scratch", Path(tmp) / "artifacts"
        scratch.mkdir()
        clock = time.monotonic()
        first = (_first_pass(corpus, config, scratch) if mode == "single"
                 else first_pass_sharded(corpus, config, str(root), scratch))
        wall = time.monotonic() - clock
        ids_out.write_text("".join(json.loads(line)["id"] + "\n" for line in first.survivors.open(encoding="utf-8")))
        key_bytes = sum(p.stat().st_size for p in (root / MAP_DIR).rglob("keys-*.npy")) if mode != "single" else 0
        map_output_bytes = sum(p.stat().st_size for p in (root / MAP_DIR).rglob("*") if p.is_file()) if mode != "single" else 0
    extra = first.extra_metrics
    return {
        "mode": mode, "workers": workers, "wall_seconds": round(wall, 2),
        "map_seconds": extra.get("map_seconds"), "reduce_seconds": extra.get("reduce_seconds"),
        "merge_seconds": round(wall - extra["map_seconds"] - extra["reduce_seconds"], 2) if extra else None,
        "docs_in": first.docs_in, "bytes_in": first.bytes_in, "docs_kept": sum(t.docs for t in first.tallies.values()),
        "mb_per_second": round(first.bytes_in / 1e6 / wall, 3),
        "peak_rss_parent_mb": round(_peak_mb(resource.RUSAGE_SELF), 1),
        "peak_rss_worker_mb": round(_peak_mb(resource.RUSAGE_CHILDREN), 1),
        "key_bytes": key_bytes, "map_output_bytes": map_output_bytes,
        "partitions": extra.get("dedup_partitions"), "near_duplicate_clusters": extra.get("near_duplicate_clusters"),
    }


def plan_30t(sharded_1: dict, tokens: float) -> dict:
    """The seed's scale from one sharded worker's measured rates (linear: maps share nothing)."""
    total_bytes = tokens * BYTES_PER_TOKEN
    map_rate = sharded_1["bytes_in"] / sharded_1["map_seconds"]  # bytes/s of one map worker
    shards = math.ceil(total_bytes / SHARD_BYTES)
    workers = math.ceil(total_bytes / map_rate / (MAP_HOURS * 3600))
    key_bytes = total_bytes * sharded_1["key_bytes"] / sharded_1["bytes_in"]
    # A reducer loads its keys (24-byte rows) and sorts them: about 3x their size at its peak.
    partitions = math.ceil(3 * key_bytes / REDUCER_MEMORY_BYTES)
    reduce_rate = sharded_1["key_bytes"] / max(sharded_1["reduce_seconds"], 1e-9)
    docs = total_bytes * sharded_1["docs_in"] / sharded_1["bytes_in"]
    return {
        "tokens": tokens, "bytes": total_bytes, "shards": shards, "shard_bytes": SHARD_BYTES,
        "map_mb_per_second_per_worker": round(map_rate / 1e6, 3), "map_workers": workers,
        "map_hours": round(total_bytes / map_rate / workers / 3600, 1),
        "map_worker_memory_mb": sharded_1["peak_rss_worker_mb"],
        "key_bytes_total": key_bytes, "reduce_partitions": partitions,
        "reduce_key_bytes_per_partition": key_bytes / partitions,
        "reduce_memory_per_partition_gb": round(3 * key_bytes / partitions / 1e9, 1),
        "reduce_hours_one_partition": round(key_bytes / partitions / reduce_rate / 3600, 2),
        "documents": docs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=0.07, help="corpus size in GiB (default 0.07, ~75 MB)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--plan-tokens", type=float, default=30e12)
    parser.add_argument("--json", type=Path, default=OUT / "datamix_sharded.json")
    parser.add_argument("--one", nargs=4, metavar=("MODE", "CORPUS", "WORKERS", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, corpus, workers, ids = args.one
        print(json.dumps(one_run(mode, corpus, int(workers), Path(ids))))
        return 0

    from tasks.runtime.home import herd_home

    OUT.mkdir(parents=True, exist_ok=True)
    corpus = generate_corpus(udhr_source(herd_home()), args.gb, seed=0)
    runs, kept = [], {}
    for workers in args.workers:
        for mode in ("single", "sharded"):
            ids = OUT / f"datamix_sharded-{mode}-{workers}.ids"
            done = subprocess.run([sys.executable, __file__, "--one", mode, corpus.folder, str(workers), str(ids)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            kept[(mode, workers)] = ids.read_text()
            print(json.dumps(runs[-1]), flush=True)
    identical = len(set(kept.values())) == 1
    sharded_1 = next(r for r in runs if r["mode"] == "sharded" and r["workers"] == min(args.workers))
    result = {"machine": machine(), "git": git_state(), "corpus": corpus.folder, "corpus_bytes": corpus.bytes,
              "command": " ".join(["bench/datamix_sharded.py", *sys.argv[1:]]), "identical_kept_ids": identical,
              "runs": runs, "plan": plan_30t(sharded_1, args.plan_tokens)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nkept ids identical in every run: {identical}")
    print(f"{'mode':<8} {'workers':>7} {'wall s':>7} {'MB/s':>6} {'map s':>6} {'reduce s':>8} {'merge s':>7} "
          f"{'reduce share':>12} {'worker RSS MB':>13}")
    for r in runs:
        share = f"{(r['reduce_seconds'] + r['merge_seconds']) / r['wall_seconds']:.1%}" if r["map_seconds"] else ""
        print(f"{r['mode']:<8} {r['workers']:>7} {r['wall_seconds']:>7} {r['mb_per_second']:>6} "
              f"{r['map_seconds'] or '':>6} {r['reduce_seconds'] or '':>8} {r['merge_seconds'] or '':>7} {share:>12} "
              f"{r['peak_rss_worker_mb'] if r['map_seconds'] else '':>13}")
    p = result["plan"]
    print(f"\nPlan for {p['tokens']:.0e} tokens (~{p['bytes'] / 1e12:.0f} TB at {BYTES_PER_TOKEN} bytes/token): "
          f"{p['shards']:,} shards of {SHARD_BYTES >> 30} GiB; {p['map_workers']:,} map workers at "
          f"{p['map_mb_per_second_per_worker']} MB/s each -> {p['map_hours']} h of maps, "
          f"{p['map_worker_memory_mb']:.0f} MB per worker; {p['key_bytes_total'] / 1e12:.1f} TB of keys in "
          f"{p['reduce_partitions']:,} partitions, ~{p['reduce_memory_per_partition_gb']} GB of memory per reducer, "
          f"~{p['reduce_hours_one_partition']} h each; {p['documents']:.2e} documents")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
