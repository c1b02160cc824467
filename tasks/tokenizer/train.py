"""Training the byte-level BPE and saving it so that ``transformers`` loads it as it is."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from herd.stages.tokenizer import TokenizerConfig
from tasks.tokenizer import special_tokens as st

# The o200k split pattern Llama 4 uses before byte-level BPE: words with their leading
# space or punctuation, numbers in groups of up to three, runs of other symbols.
SPLIT_PATTERN = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass
class Sample:
    """A language-balanced training sample, and a disjoint held-out set for fertility."""

    train: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    held_out: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    train_chars: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _held_out(doc_id: str, seed: int) -> bool:
    return hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=4).digest()[0] < 39  # ~15%


def balanced_sample(docs: Iterable[dict], config: TokenizerConfig) -> Sample:
    """Up to ``sample_chars_per_language`` characters per language; repeats from up-sampling count once."""
    sample = Sample()
    for doc in docs:
        if doc.get("copy", 0):
            continue
        lang, text = doc["lang"], doc["text"]
        if _held_out(doc["id"], config.seed):
            if len(sample.held_out[lang]) < config.fertility_docs_per_language:
                sample.held_out[lang].append(text)
        elif sample.train_chars[lang] < config.sample_chars_per_language:
            sample.train[lang].append(text)
            sample.train_chars[lang] += len(text)
    return sample


def _texts(sample: Sample) -> Iterator[str]:
    for lang in sorted(sample.train):
        yield from sample.train[lang]


def train_tokenizer(sample: Sample, config: TokenizerConfig) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(sample), trainer=trainer)
    # Specials go after the learned vocabulary, as Llama 4 numbers them after its 200k BPE ids.
    tokenizer.add_special_tokens(st.special_tokens(config.num_reserved_special_tokens))
    return tokenizer


def save_for_transformers(tokenizer: Tokenizer, folder: Path, max_length: int = 1 << 20) -> None:
    """``tokenizer.json`` plus the configs ``PreTrainedTokenizerFast.from_pretrained`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": st.BEGIN_OF_TEXT,
        "eos_token": st.EOT,
        "pad_token": st.PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "chat_template": st.CHAT_TEMPLATE,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    specials = {"bos_token": st.BEGIN_OF_TEXT, "eos_token": st.EOT, "pad_token": st.PAD}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
