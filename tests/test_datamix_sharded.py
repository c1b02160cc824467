"""The data mix as a map-reduce: the same kept documents as the single process, shard reuse, faults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, herd, output_of
from herd.pipeline import load_config
from tasks.datamix import mapreduce
from tasks.datamix.sharded import first_pass_sharded
from tasks.datamix.stage import _first_pass


def _sharded_corpus(udhr_subset: Path, folder: Path, shards: int = 8) -> Path:
    """The subset dealt round-robin into ``shards`` files, with exact and near copies planted in other shards."""
    folder.mkdir()
    lines = udhr_subset.read_bytes().splitlines(keepends=True)
    planted = []
    for i in range(0, 300, 11):
        doc = json.loads(lines[i])
        planted.append(dict(doc, id=f"exact-{i}"))
        planted.append(dict(doc, id=f"near-{i}", text=doc["text"].replace(".", ";", 1) + " "))
    lines += [json.dumps(d, ensure_ascii=False).encode() + b"\n" for d in planted]
    for k in range(shards):
        (folder / f"part-{k:02d}.jsonl").write_bytes(b"".join(lines[k::shards]))
    return folder


def _ids(first) -> list[str]:
    return [json.loads(line)["id"] for line in first.survivors.open(encoding="utf-8")]


def _single(corpus: Path, config, scratch: Path):
    scratch.mkdir()
    return _first_pass(str(corpus), config, scratch)


def _sharded(corpus: Path, config, root: Path, scratch: Path):
    scratch.mkdir()
    return first_pass_sharded(str(corpus), config, str(root), scratch)


def test_eight_shards_keep_exactly_the_single_process_documents(udhr_subset, tmp_path):
    corpus = _sharded_corpus(udhr_subset, tmp_path / "corpus")
    config = load_config("nano", {"datamix.workers": 2, "datamix.dedup_partitions": 5}).datamix
    single = _single(corpus, config, tmp_path / "s")
    sharded = _sharded(corpus, config, tmp_path / "art", tmp_path / "m")
    kept = _ids(sharded)
    assert kept == _ids(single)  # the same documents, in the same order
    originals = {f"exact-{i}": json.loads(line)["id"] for i, line in enumerate(udhr_subset.open()) if i < 300 and i % 11 == 0}
    # Each planted copy sits in another shard than its original: only the earlier of the two survives.
    assert all(not (copy in kept and original in kept) for copy, original in originals.items())
    assert sum(copy in kept or original in kept for copy, original in originals.items()) >= 20
    assert sharded.drops == single.drops and sharded.drops["exact_duplicate"] >= 27
    assert sharded.tallies == single.tallies and sharded.stats == single.stats
    assert (sharded.docs_in, sharded.bytes_in) == (single.docs_in, single.bytes_in)
    assert sharded.extra_metrics["shards"] == 8 and sharded.extra_metrics["near_duplicate_clusters"] >= 27


def test_stage_with_map_reduce_writes_the_same_mix(udhr_subset, tmp_path):
    corpus = _sharded_corpus(udhr_subset, tmp_path / "corpus")
    outs = []
    for mode in ("false", "true"):
        env = {"HERD_HOME": str(tmp_path / f"home-{mode}")}
        outs.append(Path(output_of(herd("stage", "datamix", "--run", "mr", "--in", f"corpus={corpus}",
                                        "--set", f"datamix.map_reduce={mode}", env=env))))
    assert outs[0].name == outs[1].name  # map_reduce is operational: the same output hash
    shards = sorted(p.name for p in (outs[0] / "shards").iterdir())
    assert shards == sorted(p.name for p in (outs[1] / "shards").iterdir())
    for name in shards:
        assert (outs[0] / "shards" / name).read_bytes() == (outs[1] / "shards" / name).read_bytes()
    metrics = json.loads((outs[1] / "step.json").read_text())["metrics"]
    assert metrics["shards"] == 8 and metrics["shards_reused"] == 0


def test_adding_shards_maps_only_the_new_ones_and_plan_says_so(udhr_subset, tmp_path, herd_home):
    corpus = _sharded_corpus(udhr_subset, tmp_path / "corpus")
    config = load_config("nano", {"datamix.workers": 1}).datamix
    root = tmp_path / "art"
    assert _sharded(corpus, config, root, tmp_path / "a").extra_metrics["shards_reused"] == 0
    lines = udhr_subset.read_bytes().splitlines(keepends=True)
    (corpus / "part-08.jsonl").write_bytes(b"".join(lines[::40]))
    (corpus / "part-09.jsonl").write_bytes(b"".join(lines[1::40]))
    (corpus / "part-00.jsonl").touch()  # a new mtime, the same content: still reused
    plan = herd("plan", "--set", "datamix.map_reduce=true", "--in", f"corpus={corpus}", "--out", str(root))
    assert "map-reduce: 10 shard(s), 2 to map, 8 reused by content hash" in plan.stdout
    again = _sharded(corpus, config, root, tmp_path / "b")
    assert again.extra_metrics["shards_reused"] == 8 and again.extra_metrics["shards"] == 10
    assert _ids(again) == _ids(_single(corpus, config, tmp_path / "c"))


def _kill_at(point: str, call: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``call`` in a process that SIGKILLs itself at ``point`` (a function of mapreduce), as a node loss would."""
    script = textwrap.dedent(f"""
        import os, signal
        from tasks.datamix import mapreduce
        from herd.pipeline import load_config
        config = load_config("nano", {{"datamix.batch_docs": 64}}).datamix
        real, calls = mapreduce.{point}, []
        def dying(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2 or "{point}" == "_publish":  # some output already written
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        mapreduce.{point} = dying
        {call}
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_map_killed_mid_write_is_never_read_and_reruns(udhr_subset, tmp_path):
    corpus = _sharded_corpus(udhr_subset, tmp_path / "corpus")
    root = tmp_path / "art"
    config = load_config("nano", {"datamix.workers": 1, "datamix.batch_docs": 64}).datamix
    shard = str(corpus / "part-03.jsonl")
    killed = _kill_at("process_batch", f"mapreduce.map_shard({shard!r}, config, {str(root)!r}, 16)", tmp_path)
    assert killed.returncode == -9, killed.stderr
    staged = list((root / ".staging").rglob("docs.jsonl"))
    assert staged and staged[0].stat().st_size > 0  # it died with part of its output written
    key = mapreduce.map_key(mapreduce.content_digest(shard), shard, config, 16)
    assert not (root / mapreduce.MAP_DIR / key).exists()  # nothing published where a reducer looks
    rerun = _sharded(corpus, config, root, tmp_path / "m")
    assert rerun.extra_metrics["shards_reused"] == 0
    assert _ids(rerun) == _ids(_single(corpus, config, tmp_path / "s"))


def test_a_reducer_killed_mid_write_leaves_nothing_read(udhr_subset, tmp_path):
    corpus = _sharded_corpus(udhr_subset, tmp_path / "corpus", shards=3)
    root = tmp_path / "art"
    config = load_config("nano", {"datamix.workers": 1}).datamix
    maps = [mapreduce.map_shard(str(p), config, str(root), 4).uri for p in sorted(corpus.iterdir())]
    killed = _kill_at("_publish", f"mapreduce.reduce_band({maps!r}, 2, 4, {str(root)!r})", tmp_path)
    assert killed.returncode == -9, killed.stderr
    assert list((root / ".staging").rglob("edges.npy"))  # its edges were written, not published
    keys = [m.rsplit("/", 1)[-1] for m in maps]
    part = mapreduce.reduce_uri(str(root), keys, 4, 2)
    assert not mapreduce.is_complete(part)
    with pytest.raises(Exception, match="_SUCCESS"):
        mapreduce.merge([part], 10, True)  # a later step refuses it
    assert mapreduce.reduce_band(maps, 2, 4, str(root)) == part and mapreduce.is_complete(part)


def test_a_corrupt_shard_is_counted_and_the_run_completes(udhr_subset, tmp_path):
    corpus = _sharded_corpus(udhr_subset, tmp_path / "corpus")
    config = load_config("nano", {"datamix.workers": 2}).datamix
    clean = _sharded(corpus, config, tmp_path / "art", tmp_path / "a")
    (corpus / "part-04.parquet").write_bytes(b"PAR1 this is no parquet file")
    first = _sharded(corpus, config, tmp_path / "art", tmp_path / "b")
    assert first.drops["corrupt_shard"] == 1
    assert _ids(first) == _ids(clean) and first.extra_metrics["shards_reused"] == 8


def test_union_find_labels_components_by_their_first_member():
    labels = mapreduce.union_find(7, np.array([4, 2, 6, 5]), np.array([1, 0, 5, 3]))
    assert labels.tolist() == [0, 1, 0, 3, 1, 3, 3]
