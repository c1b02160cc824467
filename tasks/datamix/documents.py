"""Reading documents and the per-document steps that run in worker processes.

A worker receives raw records (JSONL lines as bytes, or Parquet rows as dicts) and
returns the documents that passed normalisation, language checks and quality filters,
each with its exact-duplicate key and MinHash band keys, plus drop counts by reason.
Deduplication itself needs the whole stream in order, so it happens in the parent.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from herd.stages.datamix import DatamixConfig
from tasks import languages
from tasks.datamix.dedup import MinHasher, exact_key
from tasks.datamix.filters import normalize, quality_filters
from tasks.runtime import storage

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class RawBatch:
    source: str
    first_line: int
    records: list[bytes | dict[str, Any] | None]  # None: an over-long line, already skipped


@dataclass
class Document:
    id: str
    lang: str
    text: str


@dataclass
class BatchResult:
    """Survivors of the per-document steps; row ``i`` of the key arrays belongs to ``documents[i]``."""

    documents: list[Document] = field(default_factory=list)
    exact_keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), dtype=np.uint64))
    band_keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint64))
    drops: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)  # counted, not dropped: e.g. labels CLD2 cannot check
    docs_in: int = 0
    bytes_in: int = 0
    dropped_by_language: Counter = field(default_factory=Counter)


def input_files(uri: str) -> list[storage.Entry]:
    entries = [
        e for e in storage.list_files(uri)
        if e.relative.endswith(TEXT_SUFFIXES + PARQUET_SUFFIXES) and not e.relative.rsplit("/", 1)[-1].startswith(".")
    ]
    if not entries:
        raise storage.StorageError(f"no .jsonl or .parquet files under {uri}")
    return entries


def read_batches(uri: str, config: DatamixConfig) -> Iterator[RawBatch]:
    """Stream every record of every input file in a fixed order, ``config.batch_docs`` at a time."""
    for entry in input_files(uri):
        if entry.relative.endswith(PARQUET_SUFFIXES):
            yield from _parquet_batches(entry, config.batch_docs)
            continue
        with storage.open_read(entry.uri) as stream:
            batch: list[bytes | None] = []
            line_no = 0
            for line_no, line in enumerate(storage.iter_lines(stream, config.max_line_bytes), start=1):
                if line is not None and not line.strip():
                    continue
                batch.append(line)
                if len(batch) >= config.batch_docs:
                    yield RawBatch(entry.uri, line_no - len(batch) + 1, batch)
                    batch = []
            if batch:
                yield RawBatch(entry.uri, line_no - len(batch) + 1, batch)


def _parquet_batches(entry: storage.Entry, batch_docs: int) -> Iterator[RawBatch]:
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = storage.download(entry.uri, Path(tmp) / "input.parquet") if storage.is_s3(entry.uri) else entry.uri
        row = 1
        for record_batch in pq.ParquetFile(str(path)).iter_batches(batch_size=batch_docs):
            rows = record_batch.to_pylist()
            yield RawBatch(entry.uri, row, rows)
            row += len(rows)


_STATE: dict[str, Any] = {}


def init_worker(config: DatamixConfig) -> None:
    _STATE["config"] = config
    _STATE["filters"] = quality_filters(config)
    _STATE["hasher"] = MinHasher(config.minhash_num_perm, config.minhash_threshold, config.shingle_chars, seed=config.seed + 1)
    _STATE["languages"] = set(config.languages)


def _parse(raw: bytes | dict[str, Any] | None, result: BatchResult) -> dict[str, Any] | None:
    if raw is None:
        result.drops["oversized_line"] += 1
        return None
    if isinstance(raw, dict):
        record = raw
    else:
        result.bytes_in += len(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            result.drops["invalid_utf8"] += 1
            return None
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            result.drops["malformed_json"] += 1
            return None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        result.drops["no_text_field"] += 1
        return None
    return record


def _language(record: dict[str, Any], text: str, result: BatchResult) -> str | None:
    """The document's ISO 639-3 code, or None when it is dropped (the reason is counted)."""
    config: DatamixConfig = _STATE["config"]
    declared_tag = record.get("lang") or ""
    try:
        declared = languages.to_iso639_3(str(declared_tag))
    except ValueError:
        result.drops["unknown_language_code"] += 1
        return None
    guess = languages.identify(text[: config.lid_chars])
    if declared is None:
        if guess.reliable and guess.code:
            result.stats["language_from_identifier"] += 1
            return guess.code
        result.drops["language_unidentified"] += 1
        return None
    if not languages.identifiable(declared):
        result.stats["label_not_checkable"] += 1
        return declared
    result.stats["label_checked"] += 1
    if guess.code and languages.same_language(guess.code, declared):
        result.stats["label_confirmed"] += 1
        return declared
    # CLD2 confuses close relatives (Serbian/Bosnian/Croatian, Zulu/Ndebele): only a confident
    # verdict for a distant language contradicts the label.
    contradicted = (
        guess.reliable
        and guess.percent >= config.mismatch_min_percent
        and not any(languages.same_language(c, declared) for c in guess.candidates)
        and languages.distance(declared, guess.code) >= config.mismatch_min_distance
    )
    if contradicted and config.drop_language_mismatch:
        result.drops["language_mismatch"] += 1
        result.dropped_by_language[declared] += 1
        return None
    return declared


def process_batch(batch: RawBatch) -> BatchResult:
    config: DatamixConfig = _STATE["config"]
    hasher: MinHasher = _STATE["hasher"]
    wanted: set[str] = _STATE["languages"]
    result = BatchResult(docs_in=len(batch.records))
    exact_keys: list[int] = []
    band_keys: list[np.ndarray] = []
    for offset, raw in enumerate(batch.records):
        record = _parse(raw, result)
        if record is None:
            continue
        if isinstance(raw, dict):
            result.bytes_in += len(record["text"].encode("utf-8", "surrogatepass"))
        try:
            text = normalize(record["text"], config.unicode_form)
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a JSON escape
            result.drops["invalid_utf8"] += 1
            continue
        if not text:
            result.drops["empty"] += 1
            continue
        lang = _language(record, text, result)
        if lang is None:
            continue
        if wanted and lang not in wanted:
            result.drops["language_not_selected"] += 1
            continue
        failed = next((f.name for f in _STATE["filters"] if not f.keep(text)), None)
        if failed:
            result.drops[failed] += 1
            result.dropped_by_language[lang] += 1
            continue
        doc_id = str(record.get("id") or f"{batch.source}:{batch.first_line + offset}")
        result.documents.append(Document(doc_id, lang, text))
        exact_keys.append(exact_key(text))
        band_keys.append(hasher.band_keys(text))
    if result.documents:
        result.exact_keys = np.array(exact_keys, dtype=np.uint64).reshape(-1, 1)
        result.band_keys = np.stack(band_keys)
    return result
