"""A model stage's output: weights in our names, their config, and the Hugging Face export beside them.

    model.safetensors   model_config.json   hf/ (config.json, the weights' shards, selection_bias.safetensors, tokenizer)

Every model stage writes this layout, and the next one reads it with :func:`load_model`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from herd.model import ModelConfig
from tasks.model import hf
from tasks.model.llama4 import Llama4

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"


def write_model(model: Llama4, folder: Path, tokenizer_dir: Path, bos_id: int, eos_id: int) -> Path:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(model.config.model_dump(mode="json"), indent=2))
    export = hf.export(model, folder / "hf", bos_id=bos_id, eos_id=eos_id)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, export / name)
    return export


def load_model(folder: Path, **config_updates) -> Llama4:
    """The model a stage wrote; ``config_updates`` change what does not touch the weights (e.g. ``max_seq_len``)."""
    config = ModelConfig.model_validate_json((folder / CONFIG).read_text())
    if config_updates:
        config = config.model_copy(update=config_updates)
    model = Llama4(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    return model


def model_files(relative: str) -> bool:
    """What :func:`tasks.runtime.storage.localize` must fetch to load a stage's model."""
    return relative in (WEIGHTS, CONFIG)


def tokenizer_files(relative: str) -> bool:
    return relative.startswith("tokens/") or relative in TOKENIZER_FILES
