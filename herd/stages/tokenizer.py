"""Config of the ``tokenizer`` stage: byte-level BPE with Llama 4's special tokens, then token shards."""

from __future__ import annotations

from pydantic import Field

from herd.config import StageConfig, operational
from herd.stage import Input, Resources, StageSpec


class TokenizerConfig(StageConfig):
    vocab_size: int = Field(8192, ge=512, le=262_144, description="Learned BPE vocabulary, before special tokens.")
    min_frequency: int = Field(2, ge=1)
    num_reserved_special_tokens: int = Field(
        64, ge=0, le=2048, description="Reserved special tokens after the named ones (Llama 4 ships 2048)."
    )
    sample_chars_per_language: int = Field(
        40_000, gt=0, description="Training text per language, so that no language dominates the merges."
    )
    fertility_docs_per_language: int = Field(20, gt=0)
    seed: int = 0
    batch_docs: int = operational(1024, "Documents per encode batch.")


SPEC = StageSpec(
    name="tokenizer",
    summary="train a byte-level BPE with Llama 4 special tokens and write packed token shards",
    config_type=TokenizerConfig,
    config_section="tokenizer",
    inputs={"mix": Input("the datamix output", from_stage="datamix"),
            # Retraining keeps the champion's tokenizer: continued pretraining needs its token ids.
            "base": Input("a tokenizer or model output whose tokenizer to keep instead of training one",
                          optional=True)},
    resources=Resources(cpu="4", memory="16Gi"),
)
