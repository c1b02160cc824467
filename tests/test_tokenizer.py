"""The tokenizer stage: a BPE that transformers loads, Llama 4 specials, packed shards with language spans."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import herd, output_of
from tasks.tokenizer import special_tokens as st
from tasks.tokenizer.encode import read_shard


@pytest.fixture(scope="module")
def tokenizer_output(udhr_subset, tmp_path_factory) -> tuple[Path, Path]:
    env = {"HERD_HOME": str(tmp_path_factory.mktemp("tok-home"))}
    mix = output_of(herd("stage", "datamix", "--run", "tok", "--in", f"corpus={udhr_subset}", env=env))
    out = output_of(herd("stage", "tokenizer", "--run", "tok", "--in", f"mix={mix}",
                         "--set", "tokenizer.vocab_size=2048", env=env))
    return Path(mix), Path(out)


def test_transformers_loads_it_with_llama4_specials_and_chat_template(tokenizer_output):
    from transformers import PreTrainedTokenizerFast

    _, out = tokenizer_output
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
    assert len(tokenizer) == 2048 + len(st.special_tokens(64))
    # Specials follow the learned vocabulary in Llama 4's order.
    assert tokenizer.convert_tokens_to_ids(st.BEGIN_OF_TEXT) == 2048
    assert tokenizer.convert_tokens_to_ids("<|patch|>") - 2048 == st.NAMED.index("<|patch|>")
    text = "Toute personne a droit à l'éducation. Всякий человек имеет право на образование."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    assert rendered == ("<|begin_of_text|><|header_start|>user<|header_end|>\n\n2+2?<|eot|>"
                        "<|header_start|>assistant<|header_end|>\n\n4<|eot|>")
    encoded = tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    trained = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(trained) == "4<|eot|>"


def test_token_shards_are_packed_with_a_language_per_span(tokenizer_output):
    mix, out = tokenizer_output
    index = json.loads((out / "tokens/index.json").read_text())
    manifest = json.loads((mix / "manifest.json").read_text())
    assert len(index["shards"]) == len(manifest["shards"])
    assert np.dtype(index["dtype"]) == np.uint16
    total = 0
    for number, shard in enumerate(index["shards"]):
        tokens, spans = read_shard(out, index, number)
        assert len(spans) == shard["num_docs"] == manifest["shards"][number]["docs"]
        assert spans[0, 0] == 0 and np.all(spans[1:, 0] == spans[:-1, 0] + spans[:-1, 1])
        assert spans[-1, 0] + spans[-1, 1] == len(tokens) == shard["num_tokens"]
        assert np.all(tokens[spans[:, 0]] == index["bos_id"])
        assert np.all(tokens[spans[:, 0] + spans[:, 1] - 1] == index["eos_id"])
        assert spans[:, 2].max() < len(index["languages"])
        total += len(tokens)
    assert total == index["num_tokens"] == sum(index["tokens_per_language"].values())
    assert set(index["languages"]) == set(manifest["languages"])


def test_fertility_per_language(tokenizer_output):
    _, out = tokenizer_output
    rows = {r["lang"]: r for r in csv.DictReader((out / "reports/fertility.csv").open())}
    assert {"eng", "cmn", "hin", "arb"} <= set(rows)
    for row in rows.values():
        assert float(row["tokens_per_char"]) > 0
    # A byte-level BPE trained on a balanced sample needs more tokens per character for Devanagari than for English.
    assert float(rows["hin"]["tokens_per_char"]) > float(rows["eng"]["tokens_per_char"])


def test_incomplete_mix_is_refused(tokenizer_output, tmp_path):
    mix, _ = tokenizer_output
    partial = tmp_path / "partial-mix"
    partial.mkdir()
    (partial / "manifest.json").write_text((mix / "manifest.json").read_text())
    result = herd("stage", "tokenizer", "--run", "x", "--in", f"mix={partial}", check=False)
    assert result.returncode == 2
    assert "incomplete (no _SUCCESS marker)" in result.stderr
