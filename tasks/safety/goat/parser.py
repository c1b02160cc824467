"""The attacker's answer read into its four parts, Observation, Thought, Strategy and Response."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class AttackerTurn:
    observation: str
    thought: str
    strategy: str
    response: str


_LABELS = {"observation": "observation", "thought": "thought", "strategy": "strategy", "response": "response",
           "reply": "response"}
_LABEL = re.compile(
    r"^[ \t>#*_\-\d.)(]*\**[ \t]*(observation|thought|strategy|response|reply)[ \t]*(?:\([OTSR]\))?[ \t]*\**"
    r"[ \t]*[:：][ \t]*\**",
    re.IGNORECASE | re.MULTILINE)
_JSON = re.compile(r"\{.*\}", re.DOTALL)
_PLACEHOLDER = re.compile(r"^[\s.…\-_*\"'`]*$")


def _clean(text: str) -> str:
    text = text.strip().strip("*").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def parse_attacker(text: str) -> AttackerTurn | None:
    """The four parts of an attacker's turn; None when it holds no usable Response (see the module docstring)."""
    parts: dict[str, str] = {}
    found = list(_LABEL.finditer(text))
    for here, after in zip(found, [*found[1:], None]):
        key = _LABELS[here.group(1).lower()]
        if key not in parts:  # a model that repeats the format is read by its first block
            parts[key] = _clean(text[here.end(): after.start() if after else len(text)])
    if not parts.get("response"):
        match = _JSON.search(text)
        if match:
            try:
                loaded = json.loads(match.group(0))
            except json.JSONDecodeError:
                loaded = None
            if isinstance(loaded, dict):
                lowered = {str(k).lower(): v for k, v in loaded.items()}
                parts = {key: _clean(str(lowered[name])) for name, key in _LABELS.items()
                         if isinstance(lowered.get(name), str)}
    response = parts.get("response", "")
    if not response or _PLACEHOLDER.match(response):
        return None
    return AttackerTurn(parts.get("observation", ""), parts.get("thought", ""), parts.get("strategy", ""), response)
