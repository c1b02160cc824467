"""Packed, memory-mappable token shards with a per-span language index.

Each mix shard becomes ``tokens/shard-NNNNN.bin``: every document as
``<|begin_of_text|> tokens <|end_of_text|>``, concatenated, as raw little-endian
``uint16`` (vocabularies up to 65,536) or ``uint32``; and ``shard-NNNNN.spans.bin``, int64
rows ``(start, length, language index)``, one per document. ``tokens/index.json`` names
the dtype, the languages and per-language token counts. The mix shards are already
shuffled, so the token shards keep their order. Readers use ``numpy.memmap``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer

from tasks.tokenizer import special_tokens as st

SPAN_COLUMNS = ["start", "length", "lang"]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _batches(lines: Iterable[str], size: int):
    batch = []
    for line in lines:
        batch.append(json.loads(line))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_shards(tokenizer: Tokenizer, mix_shards: list[Path], out_dir: Path, batch_docs: int) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    bos, eos = tokenizer.token_to_id(st.BEGIN_OF_TEXT), tokenizer.token_to_id(st.END_OF_TEXT)
    lang_index: dict[str, int] = {}
    tokens_per_language: Counter = Counter()
    shards = []
    for number, mix_shard in enumerate(mix_shards):
        token_path = out_dir / f"shard-{number:05d}.bin"
        span_path = out_dir / f"shard-{number:05d}.spans.bin"
        position, docs = 0, 0
        with mix_shard.open(encoding="utf-8") as lines, token_path.open("wb") as tokens_out, span_path.open("wb") as spans_out:
            for batch in _batches(lines, batch_docs):
                encodings = tokenizer.encode_batch([doc["text"] for doc in batch], add_special_tokens=False)
                spans = np.empty((len(batch), 3), dtype="<i8")
                pieces = []
                for row, (doc, encoding) in enumerate(zip(batch, encodings)):
                    ids = [bos, *encoding.ids, eos]
                    lang = lang_index.setdefault(doc["lang"], len(lang_index))
                    spans[row] = (position, len(ids), lang)
                    position += len(ids)
                    tokens_per_language[doc["lang"]] += len(ids)
                    pieces.append(np.asarray(ids, dtype=dtype))
                tokens_out.write(np.concatenate(pieces).tobytes())
                spans_out.write(spans.tobytes())
                docs += len(batch)
        shards.append({
            "tokens": f"tokens/{token_path.name}",
            "spans": f"tokens/{span_path.name}",
            "num_tokens": position,
            "num_docs": docs,
        })
    index = {
        "dtype": dtype.str,
        "span_columns": SPAN_COLUMNS,
        "vocab_size": vocab_size,
        "bos_id": bos,
        "eos_id": eos,
        "languages": sorted(lang_index, key=lang_index.get),
        "tokens_per_language": dict(sorted(tokens_per_language.items())),
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "shards": shards,
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def read_shard(folder: Path, index: dict, number: int) -> tuple[np.memmap, np.ndarray]:
    """Tokens (memory-mapped) and spans of one shard, as pretraining will read them."""
    shard = index["shards"][number]
    tokens = np.memmap(folder / shard["tokens"], dtype=np.dtype(index["dtype"]), mode="r")
    spans = np.fromfile(folder / shard["spans"], dtype="<i8").reshape(-1, len(index["span_columns"]))
    return tokens, spans
