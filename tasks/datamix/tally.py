"""What the first pass (single-process or map-reduce) hands to the budgets and the mix."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LanguageTally:
    docs: int = 0
    tokens: int = 0
    dropped: int = 0


@dataclass
class FirstPass:
    survivors: Path  # JSONL of {"id", "lang", "text"}, in input order
    tallies: dict[str, LanguageTally]
    drops: Counter
    stats: Counter
    docs_in: int
    bytes_in: int
    index_bytes: int
    extra_metrics: dict[str, float] = field(default_factory=dict)
