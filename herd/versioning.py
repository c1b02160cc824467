"""Where a stage's output lives: a hash of what determines it.

The hash covers the stage name, its code version, the config fields that change the
result (see :func:`herd.config.operational`), the fields of other sections it reads, its
variant's model preset and the hashes of its inputs. Same inputs, same config, same code ->
same path -> the stage is skipped.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from herd.config import StageConfig
from herd.pipeline import PipelineConfig
from herd.stage import StageSpec

HASH_CHARS = 16


def version_record(spec: StageSpec, config: StageConfig, input_hashes: dict[str, str],
                   model_preset: str | None = None, read_fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the output hash is computed from; kept in ``step.json`` so a plan can say what changed.

    A per-variant stage also records its variant and the variant's model preset;
    ``read_fields`` are the other sections' fields the stage reads (``spec.reads``).
    """
    fields = {**config.versioned_fields(prefix=f"{spec.config_section}."), **(read_fields or {})}
    if spec.variant:
        fields[f"models.{spec.variant}"] = model_preset
    record = {
        "stage": spec.name,
        "code_version": spec.version,
        "config": fields,
        "inputs": dict(sorted(input_hashes.items())),
    }
    if spec.variant:
        record["variant"] = spec.variant
    return record


def stage_record(spec: StageSpec, config: PipelineConfig, input_hashes: dict[str, str]) -> dict[str, Any]:
    """The version record of ``spec`` under the whole pipeline ``config``: what the runner hashes."""
    model = config.models.preset(spec.variant) if spec.variant else None
    return version_record(spec, config.section(spec), input_hashes, model, _read_fields(spec, config))


def _read_fields(spec: StageSpec, config: PipelineConfig) -> dict[str, Any]:
    """The versioned values of the other sections' fields ``spec`` reads (``spec.reads``), dotted."""
    fields: dict[str, Any] = {}
    for name in spec.reads:
        section, _, field = name.partition(".")
        values = getattr(config, section).versioned_fields(prefix=f"{section}.")
        fields.update(values if not field else {name: values[name]})
    return fields


def output_hash(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_CHARS]


def output_uri(artifact_root: str, stage: str, digest: str) -> str:
    return f"{artifact_root.rstrip('/')}/{stage}/{digest}"


def describe_changes(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two version records."""
    changes: list[str] = []
    if previous.get("code_version") != current.get("code_version"):
        changes.append(f"code version {previous.get('code_version')} -> {current.get('code_version')}")
    old_cfg, new_cfg = previous.get("config", {}), current.get("config", {})
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key, "<unset>") != new_cfg.get(key, "<unset>"):
            changes.append(f"{key}: {old_cfg.get(key, '<unset>')!r} -> {new_cfg.get(key, '<unset>')!r}")
    old_in, new_in = previous.get("inputs", {}), current.get("inputs", {})
    for key in sorted(set(old_in) | set(new_in)):
        if old_in.get(key) != new_in.get(key):
            changes.append(f"input {key} changed ({old_in.get(key)} -> {new_in.get(key)})")
    return changes
