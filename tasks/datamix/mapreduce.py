"""The data mix's first pass as a map-reduce: map per input shard, reduce per LSH band partition.

    map_shard(shard)      -> ARTIFACT_ROOT/datamix-map/KEY/      one per input file, KEY = its content hash
    reduce_band(maps, p)  -> ARTIFACT_ROOT/datamix-reduce/KEY/part-P/   one per key partition
    merge(reduces)        -> which documents are duplicates (and the near-duplicate clusters)
    first_pass(...)       -> the survivors in input order, as the single-process pass gives them

A map normalises, identifies the language, filters and computes each document's exact key and
MinHash band keys (the same per-document code as the single process,
:func:`tasks.datamix.documents.process_batch`), and writes the keys already partitioned by
``key % partitions``: equal keys land in the same partition, so a reducer sees every
candidate pair of its keys. Every output is written whole and then published with a
``_SUCCESS`` marker (a local folder is renamed into place), so a map or reducer killed
mid-write leaves nothing that a later step reads; it is simply run again.

The keep rule is the single process's: a document is an exact duplicate when an earlier
document (in input order: the shard's place in the listing, then its line) has the same
exact key, and a near-duplicate when an earlier document shares one of its band keys. That
is "no earlier neighbour", not "one per cluster": in a cluster a-c, b-c (a and b unrelated)
both a and b survive. Each reducer therefore emits, per key, an edge from every later
holder to the key's earliest holder; a document is dropped iff it is the later end of an
edge. The union-find over the same edges gives the near-duplicate clusters, reported as a
metric.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from herd.stages.datamix import SPEC, DatamixConfig
from tasks.datamix.documents import BatchResult, init_worker, input_files, process_batch, read_batches
from tasks.runtime import storage
from tasks.runtime.step import SUCCESS

log = logging.getLogger(__name__)

MAP_DIR = "datamix-map"
REDUCE_DIR = "datamix-reduce"
FORMAT = 1  # bump when the files below change
KIND_EXACT, KIND_BAND = 0, 1
# Read only after the reduce (budgets, mix, reports): changing them reuses every map output.
AFTER_REDUCE_FIELDS = {
    "exact_dedup", "bytes_per_token", "temperature", "total_tokens", "floor_tokens", "cap_tokens",
    "max_repeat", "report_token_floor", "num_shards",
}


class CorruptShard(RuntimeError):
    """An input file that cannot be read to the end (a broken Parquet footer, an unreadable object)."""


def artifact_root(output_uri: str) -> str:
    """ARTIFACT_ROOT of a stage output ``ARTIFACT_ROOT/datamix/HASH``."""
    return output_uri.rstrip("/").rsplit("/", 2)[0]


def content_digest(uri: str) -> str:
    """The shard's bytes hashed: a map output is keyed by what the shard holds, not by its name or mtime."""
    digest = hashlib.sha256()
    with storage.open_read(uri) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def map_key(content: str, shard_uri: str, config: DatamixConfig, partitions: int) -> str:
    """What a map output depends on: the shard's content, its name (default document ids carry it),
    the config fields the map reads, the stage's code version and the partition count."""
    fields = {k: v for k, v in config.versioned_fields().items() if k not in AFTER_REDUCE_FIELDS}
    record = {"format": FORMAT, "code": SPEC.version, "content": content, "source": shard_uri,
              "fields": fields, "partitions": partitions}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


def map_uri(root: str, key: str) -> str:
    return storage.join(root, MAP_DIR, key)


def is_complete(uri: str) -> bool:
    return storage.exists(storage.join(uri, SUCCESS))


def _publish(local: Path, uri: str) -> None:
    """Make ``local`` visible at ``uri`` all at once: a rename on a local disk, the marker last on S3."""
    (local / SUCCESS).write_text("")
    if storage.is_s3(uri):
        storage.delete_tree(uri)
        storage.upload_tree(local, uri, skip={SUCCESS})
        storage.write_text(storage.join(uri, SUCCESS), "")
        return
    target = storage.local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # an earlier attempt's leftovers (no marker: never read); replaced whole
        shutil.rmtree(target)
    os.replace(local, target)


def _staging(root: str) -> Path:
    """A folder to write an output into: beside its destination on a local disk, so the rename is atomic."""
    if storage.is_s3(root):
        return Path(tempfile.mkdtemp(prefix="herd-datamix-"))
    parent = storage.local_path(root) / ".staging"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))


@dataclass
class MapResult:
    shard: str
    key: str
    uri: str
    reused: bool


def map_shard(shard_uri: str, config: DatamixConfig, root: str, partitions: int,
              content: str | None = None) -> MapResult:
    """Run the per-document steps over one input file and publish its output (reused when complete)."""
    key = map_key(content or content_digest(shard_uri), shard_uri, config, partitions)
    uri = map_uri(root, key)
    if is_complete(uri):
        return MapResult(shard_uri, key, uri, reused=True)
    init_worker(config)
    local = _staging(root)
    try:
        _write_map_output(shard_uri, config, partitions, local)
        _publish(local, uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return MapResult(shard_uri, key, uri, reused=False)


def _batches(shard_uri: str, config: DatamixConfig):
    # Only a file that cannot be parsed is corrupt. A read that fails (a lost connection, a
    # missing object) raises: the task fails and is retried, and no output records it as empty.
    try:
        yield from read_batches(shard_uri, config)
    except EOFError as err:
        raise CorruptShard(f"{shard_uri}: {err}") from err
    except Exception as err:  # pyarrow's parse errors (ArrowInvalid, ...) share no base class
        if type(err).__module__.startswith("pyarrow") and not isinstance(err, OSError | storage.StorageError):
            raise CorruptShard(f"{shard_uri}: {err}") from err
        raise


def _write_map_output(shard_uri: str, config: DatamixConfig, partitions: int, local: Path) -> None:
    total = BatchResult()
    keys: list[np.ndarray] = []
    docs_file = local / "docs.jsonl"
    count = 0
    try:
        with docs_file.open("w", encoding="utf-8") as docs:
            for batch in _batches(shard_uri, config):
                result = process_batch(batch)
                _accumulate(total, result)
                for doc in result.documents:
                    docs.write(json.dumps({"id": doc.id, "lang": doc.lang, "text": doc.text}, ensure_ascii=False) + "\n")
                if result.documents:
                    local_ids = np.arange(count, count + len(result.documents), dtype=np.uint64)
                    keys.append(_key_rows(local_ids, result.exact_keys, KIND_EXACT))
                    keys.append(_key_rows(local_ids, result.band_keys, KIND_BAND))
                count += len(result.documents)
    except CorruptShard as err:
        # The whole shard is left out, never half of it: its documents cannot be trusted.
        log.warning("datamix: corrupt shard left out: %s", err)
        docs_file.write_text("")
        keys, count = [], 0
        total = BatchResult(drops=Counter({"corrupt_shard": 1}))
    rows = np.concatenate(keys) if keys else np.zeros((0, 3), dtype=np.uint64)
    part = rows[:, 1] % np.uint64(partitions)
    for p in range(partitions):
        np.save(local / f"keys-{p:05d}.npy", rows[part == p])
    counts = {
        "shard": shard_uri, "docs": count, "docs_in": total.docs_in, "bytes_in": total.bytes_in,
        "drops": dict(total.drops), "stats": dict(total.stats), "dropped_by_language": dict(total.dropped_by_language),
    }
    (local / "counts.json").write_text(json.dumps(counts, sort_keys=True) + "\n")


def _key_rows(local_ids: np.ndarray, keys: np.ndarray, kind: int) -> np.ndarray:
    """(doc, key, kind) rows, one per key of each document."""
    width = keys.shape[1]
    return np.stack([np.repeat(local_ids, width), keys.ravel(), np.full(len(local_ids) * width, kind, dtype=np.uint64)], axis=1)


def _accumulate(total: BatchResult, result: BatchResult) -> None:
    total.docs_in += result.docs_in
    total.bytes_in += result.bytes_in
    total.drops.update(result.drops)
    total.stats.update(result.stats)
    total.dropped_by_language.update(result.dropped_by_language)


def read_counts(map_output: str) -> dict:
    return json.loads(storage.read_text(storage.join(map_output, "counts.json")))


def _load(uri: str, name: str) -> np.ndarray:
    if storage.is_s3(uri):
        import io

        return np.load(io.BytesIO(storage.read_bytes(storage.join(uri, name))), allow_pickle=False)
    return np.load(storage.local_path(storage.join(uri, name)), allow_pickle=False)


def _require(uri: str) -> None:
    if not is_complete(uri):
        raise storage.StorageError(f"{uri} has no {SUCCESS} marker: its writer did not finish")


def reduce_key(map_keys: list[str], partitions: int) -> str:
    record = {"format": FORMAT, "maps": map_keys, "partitions": partitions}
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:20]


def reduce_uri(root: str, map_keys: list[str], partitions: int, partition: int) -> str:
    return storage.join(root, REDUCE_DIR, reduce_key(map_keys, partitions), f"part-{partition:05d}")


def doc_offsets(map_outputs: list[str]) -> np.ndarray:
    """Where each shard's documents start in the global input order."""
    sizes = [read_counts(uri)["docs"] for uri in map_outputs]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.uint64)


def reduce_band(map_outputs: list[str], partition: int, partitions: int, root: str) -> str:
    """Every key of ``partition`` from every shard -> edges (later holder, earliest holder, kind)."""
    keys = [uri.rstrip("/").rsplit("/", 1)[-1] for uri in map_outputs]
    uri = reduce_uri(root, keys, partitions, partition)
    if is_complete(uri):
        return uri
    for map_output in map_outputs:
        _require(map_output)
    offsets = doc_offsets(map_outputs)
    parts = []
    for index, map_output in enumerate(map_outputs):
        rows = _load(map_output, f"keys-{partition:05d}.npy")
        rows[:, 0] += offsets[index]
        parts.append(rows)
    rows = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.uint64)
    edges = [_earliest_holder_edges(rows[rows[:, 2] == kind], kind) for kind in (KIND_EXACT, KIND_BAND)]
    local = _staging(root)
    try:
        np.save(local / "edges.npy", np.concatenate(edges))
        (local / "summary.json").write_text(json.dumps({"keys": int(len(rows)), "edges": int(sum(map(len, edges)))}) + "\n")
        _publish(local, uri)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return uri


def _earliest_holder_edges(rows: np.ndarray, kind: int) -> np.ndarray:
    order, key = rows[:, 0], rows[:, 1]
    sort = np.lexsort((order, key))  # by key, then by input order
    order, key = order[sort], key[sort]
    starts = np.ones(len(key), dtype=bool)
    starts[1:] = key[1:] != key[:-1]
    first = order[np.maximum.accumulate(np.where(starts, np.arange(len(key)), 0))]
    later = ~starts & (order != first)  # a document repeating its own band key is no pair
    return np.stack([order[later], first[later], np.full(int(later.sum()), kind, dtype=np.uint64)], axis=1)


@dataclass
class Duplicates:
    exact: np.ndarray  # bool per document in input order
    near: np.ndarray
    clusters: int  # near-duplicate clusters (connected components of more than one document)
    largest_cluster: int
    edge_bytes: int


def merge(reduce_outputs: list[str], total_docs: int, exact_dedup: bool) -> Duplicates:
    """Duplicates from every partition's edges; clusters by union-find across partitions."""
    for uri in reduce_outputs:
        _require(uri)
    edges = [_load(uri, "edges.npy") for uri in reduce_outputs]
    edges = np.concatenate(edges) if edges else np.zeros((0, 3), dtype=np.uint64)
    later, first = edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64)
    exact = np.zeros(total_docs, dtype=bool)
    if exact_dedup:
        exact[later[edges[:, 2] == KIND_EXACT]] = True
    near = np.zeros(total_docs, dtype=bool)
    near[later[edges[:, 2] == KIND_BAND]] = True
    if not exact_dedup:  # then an identical copy is a near-duplicate, as in the single process
        near[later[edges[:, 2] == KIND_EXACT]] = True
    near &= ~exact
    roots = union_find(total_docs, later, first)
    sizes = np.bincount(roots, minlength=total_docs)
    return Duplicates(exact, near, int((sizes > 1).sum()), int(sizes.max()) if total_docs else 0, int(edges.nbytes))


def union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each node's component label (its smallest member) for the edges a-b, vectorised.

    Hooking every edge's larger label onto the smaller, then pointer jumping, until nothing
    moves: O(log n) rounds of array operations instead of a Python loop per edge.
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        pa, pb = parent[a], parent[b]
        low = np.minimum(pa, pb)
        before = parent.copy()
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            return parent


@dataclass
class Plan:
    """What a sharded run would compute: which shards' map outputs exist already."""

    shards: list[str]
    keys: list[str]
    reused: list[bool] = field(default_factory=list)

    @property
    def new(self) -> int:
        return sum(not r for r in self.reused)


def plan(corpus: str, config: DatamixConfig, root: str, partitions: int) -> Plan:
    shards = [entry.uri for entry in input_files(corpus)]
    keys = [map_key(content_digest(s), s, config, partitions) for s in shards]
    return Plan(shards, keys, [is_complete(map_uri(root, k)) for k in keys])
