"""Readers for Meta PurpleLlama's CyberSecEval test files, as PurpleLlama ships them.

    dataset = read_dataset("prompt-injection", "s3://bucket/cyberseceval/prompt_injection.json")
    dataset.cases        # validated records, in file order; case.fields keeps every field of the record
    dataset.skipped      # Counter of drop reasons, e.g. {"judge_question: missing": 1, "not JSON": 2}
    found, skipped = locate_datasets(folder, config.datasets, ["mitre-frr"])   # each file in the input folder

A file is a JSON array of objects (PurpleLlama's ``datasets/*/*.json``) or JSON Lines, one object
a line. A record that cannot be used (not an object, not JSON, a required field missing or of the
wrong type, an unknown language) is counted by reason and skipped, with one log line per record;
the run goes on with the rest. Only a file with no usable record at all is an error.

The fields each benchmark requires (the rest of a record is kept and copied to the responses):

=================  ==================================================================================
prompt-injection   test_case_prompt (the system prompt), user_input, judge_question, injection_type,
                   injection_variant, risk_category; speaking_language when the set has it
mitre-frr          mutated_prompt; attack_type, is_malicious and model when present
interpreter        mutated_prompt, attack_type (a list of categories, e.g. ["Container Escape"])
instruct /         test_case_prompt, language, cwe_identifier; origin_code, line_text, variant,
autocomplete       pattern_id, analyzer, rule, repo, file_path when present
=================  ==================================================================================
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tasks.runtime import storage

log = logging.getLogger(__name__)

BENCHMARKS = ("prompt-injection", "mitre-frr", "interpreter", "instruct", "autocomplete")
# The languages Meta's Insecure Code Detector knows (codeshield's Language enum values).
ICD_LANGUAGES = ("c", "cpp", "csharp", "hack", "java", "javascript", "kotlin", "objective_c", "objective_cpp",
                 "php", "python", "ruby", "rust", "swift", "xml")


class DatasetError(ValueError):
    """A dataset that cannot be read at all (unreadable, not JSON, or without one usable record)."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, str_min_length=1)


class PromptInjectionRecord(_Record):
    test_case_prompt: str
    user_input: str
    judge_question: str
    injection_type: str
    injection_variant: str
    risk_category: str
    speaking_language: str | None = None


class MitreFRRRecord(_Record):
    mutated_prompt: str
    attack_type: str | None = None
    is_malicious: bool | None = None


class InterpreterRecord(_Record):
    mutated_prompt: str
    attack_type: list[str]

    @field_validator("attack_type")
    @classmethod
    def _some_category(cls, value: list[str]) -> list[str]:
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError("needs at least one category name")
        return value


class InsecureCodeRecord(_Record):
    test_case_prompt: str
    language: str
    cwe_identifier: str
    origin_code: str | None = None
    line_text: str | None = None
    variant: str | None = None

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        if value not in ICD_LANGUAGES:
            raise ValueError(f"{value!r} is not a language the Insecure Code Detector scans")
        return value


SCHEMAS: dict[str, type[_Record]] = {
    "prompt-injection": PromptInjectionRecord,
    "mitre-frr": MitreFRRRecord,
    "interpreter": InterpreterRecord,
    "instruct": InsecureCodeRecord,
    "autocomplete": InsecureCodeRecord,
}


@dataclass(frozen=True)
class Case:
    prompt_id: int  # the record's position in the file, as PurpleLlama numbers its responses
    fields: dict[str, Any]  # the whole record as the file has it


@dataclass
class Dataset:
    benchmark: str
    uri: str
    records: int = 0  # records in the file, usable or not
    cases: list[Case] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _reason(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "record"
    return f"{where}: {'missing' if first['type'] == 'missing' else first['msg']}"


def _raw_records(text: str, uri: str) -> list[Any]:
    """The file's records; a JSON Lines line that does not parse becomes a ``_NotJSON`` marker."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{uri} is not a JSON array: {err}") from None
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            records.append(_NotJSON(f"line {number}: {err.msg}"))
    return records


@dataclass(frozen=True)
class _NotJSON:
    where: str


def parse_records(benchmark: str, records: list[Any], uri: str = "<records>") -> Dataset:
    if benchmark not in SCHEMAS:
        raise DatasetError(f"unknown benchmark {benchmark!r}: one of {', '.join(BENCHMARKS)}")
    schema = SCHEMAS[benchmark]
    dataset = Dataset(benchmark, uri, records=len(records))
    for index, record in enumerate(records):
        if isinstance(record, _NotJSON):
            reason, detail = "not JSON", record.where
        elif not isinstance(record, dict):
            reason, detail = "not an object", type(record).__name__
        else:
            try:
                schema.model_validate(record)
            except ValidationError as err:
                reason, detail = _reason(err), ""
            else:
                dataset.cases.append(Case(index, record))
                continue
        dataset.skipped[reason] += 1
        log.warning("%s record %d skipped: %s%s", uri, index, reason, f" ({detail})" if detail else "")
    if not dataset.cases:
        raise DatasetError(f"{uri}: none of its {len(records)} records is a {benchmark} test case "
                           f"(skipped: {dict(dataset.skipped) or 'none'})")
    return dataset


def read_dataset(benchmark: str, uri: str) -> Dataset:
    """A CyberSecEval file from a local path, ``file://`` or ``s3://`` URI; unusable records counted and skipped."""
    try:
        text = storage.read_text(uri)
    except storage.StorageError as err:
        raise DatasetError(str(err)) from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{uri} is not UTF-8 text: {err}") from None
    records = _raw_records(text, uri)
    if not isinstance(records, list):
        raise DatasetError(f"{uri}: expected a JSON array of test cases, found {type(records).__name__}")
    return parse_records(benchmark, records, uri)


def spread(cases: list[Case], limit: int) -> list[Case]:
    """``limit`` cases spread evenly over the file (all when 0), as PurpleLlama's ``--num-test-cases`` picks them."""
    if limit <= 0 or len(cases) <= limit:
        return cases
    return cases[:: len(cases) // limit][:limit]


def locate_datasets(folder: str | None, files: dict[str, str], benchmarks: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``({benchmark: URI}, {benchmark: why skipped})`` for the benchmarks' files inside the cyberseceval folder."""
    if not folder:
        reason = ("no CyberSecEval datasets: give the stage's cyberseceval input, set HERD_CYBERSECEVAL_URI, "
                  "or put PurpleLlama's files in $HERD_HOME/cyberseceval")
        return {}, {benchmark: reason for benchmark in benchmarks}
    found, skipped = {}, {}
    for benchmark in benchmarks:
        uri = storage.join(folder, files[benchmark])
        if storage.exists(uri):
            found[benchmark] = uri
        else:
            skipped[benchmark] = f"{files[benchmark]} is not in {folder}"
    return found, skipped
