"""Typed configs: bad fields are refused before any work, naming the field and what is allowed."""

from __future__ import annotations

import pytest

from herd.config import ConfigError
from herd.pipeline import load_config
from conftest import herd


def test_presets_load_and_are_frozen():
    nano = load_config("nano")
    assert nano.preset == "nano" and nano.datamix.min_chars == 40
    with pytest.raises(Exception):
        nano.datamix.min_chars = 3  # type: ignore[misc]
    assert load_config("small").tokenizer.vocab_size > nano.tokenizer.vocab_size


def test_unknown_field_names_it_and_lists_allowed():
    with pytest.raises(ConfigError) as err:
        load_config("nano", {"datamix.min_charz": 3})
    message = str(err.value)
    assert "unknown field 'datamix.min_charz'" in message
    assert "min_chars" in message and "temperature" in message


def test_ill_typed_and_out_of_range_fields_name_the_field():
    with pytest.raises(ConfigError, match=r"datamix\.min_chars"):
        load_config("nano", {"datamix.min_chars": "many"})
    with pytest.raises(ConfigError, match=r"datamix\.temperature"):
        load_config("nano", {"datamix.temperature": 0.5})
    with pytest.raises(ConfigError, match=r"'NFC' or 'NFKC'"):
        load_config("nano", {"datamix.unicode_form": "NFD"})
    with pytest.raises(ConfigError, match="not ISO 639-3"):
        load_config("nano", {"datamix.languages": ["english"]})


def test_unknown_preset_and_section():
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("huge")
    with pytest.raises(ConfigError, match="unknown field 'pretrian'"):
        load_config("nano", {"pretrian.steps": 3})


def test_yaml_file_on_top_of_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: small\ndatamix:\n  min_chars: 12\n")
    config = load_config(str(path), {"tokenizer.vocab_size": 1024})
    assert (config.preset, config.datamix.min_chars, config.tokenizer.vocab_size) == ("small", 12, 1024)
    assert config.datamix.num_shards == 64  # the rest of the small preset stays


def test_cli_refuses_bad_config_with_exit_2_and_writes_nothing(herd_home):
    result = herd("stage", "datamix", "--run", "r", "--set", "datamix.bogus=1", check=False)
    assert result.returncode == 2
    assert "unknown field 'datamix.bogus'" in result.stderr
    assert not (herd_home / "artifacts").exists()
