"""Which config changes move a stage's output path, and which do not (cf. Marin's test_versioning)."""

from __future__ import annotations

from herd.pipeline import load_config, stage
from herd.versioning import describe_changes, output_hash, stage_record, version_record

UPSTREAM = {"corpus": "data:0123456789abcdef"}


def digest(name: str, overrides: dict | None = None, inputs: dict | None = None, version: int | None = None) -> str:
    spec = stage(name)
    if version is not None:
        from dataclasses import replace

        spec = replace(spec, version=version)
    config = load_config("nano", overrides or {})
    return output_hash(version_record(spec, config.section(spec), inputs or UPSTREAM))


def test_result_fields_move_the_hash():
    base = digest("datamix")
    for field, value in [("min_chars", 41), ("temperature", 2.0), ("languages", ["eng"]), ("seed", 1),
                         ("minhash_threshold", 0.7), ("num_shards", 4)]:
        assert digest("datamix", {f"datamix.{field}": value}) != base, field


def test_operational_fields_do_not_move_the_hash():
    base = digest("datamix")
    assert digest("datamix", {"datamix.workers": 7}) == base
    assert digest("datamix", {"datamix.batch_docs": 3}) == base
    assert digest("tokenizer", {"tokenizer.batch_docs": 5}, {"mix": "x"}) == digest("tokenizer", inputs={"mix": "x"})


def test_other_stages_fields_do_not_move_the_hash():
    assert digest("datamix", {"tokenizer.vocab_size": 1024}) == digest("datamix")


def test_upstream_and_code_version_move_the_hash():
    assert digest("tokenizer", inputs={"mix": "aaaa"}) != digest("tokenizer", inputs={"mix": "bbbb"})
    assert digest("datamix", version=2) != digest("datamix")


def test_same_inputs_same_hash_across_calls():
    assert digest("datamix", {"datamix.min_chars": 50}) == digest("datamix", {"datamix.min_chars": 50})


def test_changes_are_described_by_field():
    spec = stage("datamix")
    old = version_record(spec, load_config("nano").section(spec), UPSTREAM)
    new = version_record(spec, load_config("nano", {"datamix.min_chars": 60}).section(spec), {"corpus": "data:ff"})
    assert describe_changes(old, new) == [
        "datamix.min_chars: 40 -> 60",
        "input corpus changed (data:0123456789abcdef -> data:ff)",
    ]


def _record_hash(name: str, overrides: dict, variant: str | None = None) -> str:
    """The output hash as the runner computes it, with the other sections' fields a stage reads."""
    return output_hash(stage_record(stage(name, variant), load_config("nano", overrides), UPSTREAM))


def test_fields_of_other_sections_a_stage_reads_move_its_hash():
    # The teacher cache covers the windows the students' pretraining reads: their shape moves
    # it, their learning rate does not.
    base = _record_hash("codistill", {})
    for field, value in [("steps", 41), ("batch_size", 2), ("seq_len", 128), ("seed", 3)]:
        assert _record_hash("codistill", {f"pretrain.{field}": value}) != base, field
    assert _record_hash("codistill", {"pretrain.lr": 1e-3}) == base
    assert _record_hash("codistill", {"codistill.top_k": 8}) != base
    # The students' pretraining depends on the co-distillation scheme; the teacher's does not.
    for variant, moves in [("scout", True), ("maverick", True), ("behemoth", False)]:
        changed = _record_hash("pretrain", {"codistill.scheme": "fixed"}, variant) != _record_hash("pretrain", {}, variant)
        assert changed is moves, variant
