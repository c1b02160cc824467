"""Config of the ``datamix`` stage: raw corpora -> filtered, deduplicated, budgeted text shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from herd.config import StageConfig, operational
from herd.stage import Input, Resources, StageSpec


class DatamixConfig(StageConfig):
    languages: list[str] = Field(
        default_factory=list,
        description="ISO 639-3 codes to keep; empty keeps every language found.",
    )
    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    max_line_bytes: int = Field(
        4_000_000, gt=0, description="Longer input lines are skipped as 'oversized_line'."
    )
    # Quality filters (a document failing one is dropped and counted under the filter's name).
    min_chars: int = Field(40, ge=0)
    min_words: int = Field(3, ge=0)
    max_symbol_ratio: float = Field(0.25, ge=0, le=1, description="Share of punctuation/symbol characters.")
    max_digit_ratio: float = Field(0.3, ge=0, le=1)
    max_duplicate_line_ratio: float = Field(0.3, ge=0, le=1)
    # Language identification.
    lid_chars: int = Field(600, gt=0, description="Characters the identifier looks at.")
    drop_language_mismatch: bool = Field(
        True,
        description="Drop a labelled document the identifier confidently assigns to a distant language.",
    )
    mismatch_min_percent: int = Field(90, ge=0, le=100, description="Identifier's share of the text needed to overrule a label.")
    mismatch_min_distance: int = Field(
        60, ge=0, description="CLDR language distance below which a disagreement is a close relative, not a mismatch."
    )
    # Deduplication.
    exact_dedup: bool = True
    minhash_threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of near-duplicates.")
    minhash_num_perm: int = Field(128, ge=16, le=512)
    shingle_chars: int = Field(5, ge=1, le=32)
    # Token budgets, in estimated tokens (UTF-8 bytes / bytes_per_token) since the
    # tokenizer is trained on this stage's output.
    bytes_per_token: float = Field(4.0, gt=0)
    temperature: float = Field(3.0, ge=1, description="tau: target share proportional to n**(1/tau).")
    total_tokens: int | None = Field(None, gt=0, description="Budget for the whole mix; default: every kept token.")
    floor_tokens: int = Field(2_000, ge=0, description="Every language's target is raised to at least this.")
    cap_tokens: int | None = Field(None, gt=0, description="No language's target exceeds this.")
    max_repeat: float = Field(4.0, ge=1, description="Most epochs of one language's data (up-sampling limit).")
    report_token_floor: int = Field(
        5_000, ge=0, description="Languages with at least this many tokens are counted in the report."
    )
    # Output.
    num_shards: int = Field(8, ge=1)
    seed: int = 0
    workers: int = operational(0, "Processes for the CPU-bound steps; 0 uses every core.")
    batch_docs: int = operational(512, "Documents per work unit sent to a worker.")
    # The same first pass as a map-reduce (one map per input file, one reducer per key
    # partition): it keeps exactly the documents the single process keeps, so these do not
    # move the output hash.
    map_reduce: bool = operational(False, "Map per input file and reduce per LSH key partition.")
    dedup_partitions: int = operational(4, "Reducers: exact and MinHash band keys partitioned by key % this.")

    @field_validator("languages")
    @classmethod
    def _iso_codes(cls, value: list[str]) -> list[str]:
        bad = [code for code in value if not (len(code) == 3 and code.isalpha() and code.islower())]
        if bad:
            raise ValueError(f"not ISO 639-3 codes: {bad} (three lower-case letters, e.g. 'eng')")
        return sorted(set(value))

    @model_validator(mode="after")
    def _budget_bounds(self) -> "DatamixConfig":
        if self.cap_tokens is not None and self.cap_tokens < self.floor_tokens:
            raise ValueError(f"cap_tokens ({self.cap_tokens}) is below floor_tokens ({self.floor_tokens})")
        return self


SPEC = StageSpec(
    name="datamix",
    summary="normalise, identify language, filter, deduplicate and budget the raw corpus into text shards",
    config_type=DatamixConfig,
    config_section="datamix",
    inputs={"corpus": Input("JSONL/Parquet file, folder or s3:// prefix; empty for the UDHR seed corpus")},
    resources=Resources(cpu="4", memory="16Gi"),
)
