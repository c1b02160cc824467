"""Typed configs: a frozen pydantic model per stage, unknown keys refused.

Every field changes the stage's output (and so its output path) unless it is declared
with :func:`operational`, e.g. a worker count or a logging interval. The declaration
sits next to the field, so a reader sees at once what moves the cache key.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_OPERATIONAL = "herd_operational"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending field."""


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    def versioned_fields(self, prefix: str = "") -> dict[str, Any]:
        """Flattened ``{dotted.name: value}`` of the fields that change the output."""
        fields: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            if (info.json_schema_extra or {}).get(_OPERATIONAL):
                continue
            value = getattr(self, name)
            key = f"{prefix}{name}"
            if isinstance(value, StageConfig):
                fields.update(value.versioned_fields(prefix=f"{key}."))
            else:
                fields[key] = _plain(value)
        return fields


def operational(default: Any, description: str = "") -> Any:
    """A field that changes how a stage runs but never what it writes."""
    return Field(default, description=description, json_schema_extra={_OPERATIONAL: True})


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=VALUE`` -> (``a.b``, VALUE), VALUE read as JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. datamix.min_chars=30)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); a key that does not exist is refused later by validation."""
    merged = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        node = merged
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return merged


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def explain_validation_error(model: type[BaseModel], err: ValidationError) -> ConfigError:
    """Turn pydantic's report into one message per field, listing allowed names for unknown ones."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_names(model, problem["loc"][:-1])
            lines.append(f"unknown field {where!r}; allowed: {', '.join(sorted(allowed))}")
        elif isinstance(problem.get("input"), dict):  # a check across fields: its message names them
            lines.append(f"{where or 'config'}: {problem['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"field {where!r}: {problem['msg']} (got {problem.get('input')!r})")
    return ConfigError("invalid config:\n  " + "\n  ".join(lines))


def _allowed_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        info = current.model_fields.get(part) if isinstance(current, type) else None
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return []
        current = info.annotation
    return list(current.model_fields)
