"""How a user's config reaches the pipeline: a preset or a file, then dotted overrides, validated as a whole.

An unknown or ill-typed field anywhere fails before any work starts; Airflow gets the same
rules as a JSON schema, so it refuses a bad override at trigger time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from herd.config import ConfigError, StageConfig, apply_overrides, deep_merge, explain_validation_error
from herd.pipeline.config import PipelineConfig
from herd.pipeline.graph import STAGES
from herd.pipeline.presets import PRESETS
from herd.stages.gate import trigger_schemas as gate_trigger_schemas
from herd.stages.models import ModelsConfig


def load_config(preset_or_file: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """A preset name, or a JSON/YAML file ``{preset: nano, datamix: {...}}``, plus dotted overrides."""
    data = _base_data(preset_or_file)
    data = apply_overrides(data, overrides or {})
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise explain_validation_error(PipelineConfig, err) from None


def _base_data(preset_or_file: str) -> dict[str, Any]:
    if preset_or_file in PRESETS:
        return PRESETS[preset_or_file]().model_dump(mode="json")
    path = Path(preset_or_file)
    if not path.is_file():
        raise ConfigError(
            f"config {preset_or_file!r} is neither a preset ({', '.join(PRESETS)}) nor a readable file"
        )
    text = path.read_text()
    if path.suffix in {".yaml", ".yml"}:
        import yaml  # only when a YAML file is given: the contract itself needs stdlib + pydantic

        loaded = yaml.safe_load(text)
    else:
        loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
    preset = loaded.get("preset", "nano")
    if preset not in PRESETS:
        raise ConfigError(f"field 'preset' in {path}: {preset!r} is not one of {', '.join(PRESETS)}")
    return deep_merge(PRESETS[preset]().model_dump(mode="json"), loaded)


def override_schema() -> dict[str, Any]:
    """JSON schema of the overrides object, so that Airflow refuses an unknown or ill-typed field at trigger time."""
    properties: dict[str, Any] = {}
    sections = {spec.config_section: spec.config_type for spec in STAGES} | {"models": ModelsConfig}
    for section, config_type in sections.items():
        properties.update(_field_schemas(config_type, f"{section}."))
    # Fields whose rules go beyond their types: the gate's bars, which no override may remove or loosen.
    properties.update({f"gate.{name}": schema for name, schema in gate_trigger_schemas().items()})
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _field_schemas(config_type: type[StageConfig], prefix: str) -> dict[str, Any]:
    """Each field's schema under its dotted name; a nested section (``safety.goat``) both whole and field by field."""
    properties: dict[str, Any] = {}
    schema = config_type.model_json_schema()
    for name, info in config_type.model_fields.items():
        field_schema = schema.get("properties", {}).get(name, {})
        if "$ref" in json.dumps(field_schema):
            field_schema = {}  # a nested model: pydantic still checks it when the config is loaded
        properties[f"{prefix}{name}"] = {k: v for k, v in field_schema.items() if k not in {"title", "default"}}
        if isinstance(info.annotation, type) and issubclass(info.annotation, StageConfig):
            properties.update(_field_schemas(info.annotation, f"{prefix}{name}."))
    return properties
