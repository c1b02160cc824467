"""Reading a ``guards`` stage output: the two guards, as the ``safety`` stage and ``herd safety goat`` load them.

    output_guard, prompt_guard = load_guards("s3://bucket/artifacts/guards/<hash>", scratch)
"""

from __future__ import annotations

from pathlib import Path

from tasks.guards.model import OUTPUT_GUARD, PROMPT_GUARD, OutputGuard, PromptGuard
from tasks.runtime import storage

__all__ = ["OutputGuard", "PromptGuard", "load_guards"]


def load_guards(uri: str, scratch: Path) -> tuple[OutputGuard, PromptGuard]:
    """The two guards of a ``guards`` stage output (path, ``file://`` or ``s3://``)."""
    folder = storage.localize(uri, scratch / "guards",
                              lambda relative: relative.split("/", 1)[0] in (OUTPUT_GUARD, PROMPT_GUARD))
    for name in (OUTPUT_GUARD, PROMPT_GUARD):
        if not (folder / name / "model.safetensors").is_file():
            raise FileNotFoundError(f"{uri} is not a guards stage output: no {name}/model.safetensors")
    return OutputGuard.load(folder / OUTPUT_GUARD), PromptGuard.load(folder / PROMPT_GUARD)
