"""What model stages read: a tokenizer stage's output and an upstream model stage's output, fetched locally."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.model.artifacts import model_files, tokenizer_files
from tasks.runtime import storage


@dataclass(frozen=True)
class TokenizerDir:
    folder: Path
    vocab_size: int
    bos_id: int
    eos_id: int

    @property
    def tokens(self) -> Path:
        return self.folder / "tokens"


def tokenizer_dir(uri: str, scratch: Path) -> TokenizerDir:
    folder = storage.localize(uri, scratch / "tokenizer", tokenizer_files)
    index = json.loads((folder / "tokens" / "index.json").read_text())
    return TokenizerDir(folder, index["vocab_size"], index["bos_id"], index["eos_id"])


def model_dir(uri: str, scratch: Path, name: str = "model") -> Path:
    return storage.localize(uri, scratch / name, model_files)


def problems_dir(uri: str, scratch: Path) -> Path:
    return storage.localize(uri, scratch / "problems", lambda relative: relative.endswith(".jsonl") or
                            relative == "index.json")
