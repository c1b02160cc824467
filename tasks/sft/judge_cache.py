"""The judge's scores, shared by the sft stages that judge the same examples with the same judge.

    key = scores_key(config, judge_model, examples)
    scores = read_scores(key)          # None unless a stage judged exactly these examples so before
    write_scores(key, scores)

Behemoth judges every variant's SFT data: with the same weights, settings and examples, the
three sft stages of a pipeline would compute the same scores three times (on nano, 1,116
forward passes of the teacher each). The first to judge writes them to
``$HERD_HOME/cache/sft_judge/<key>.json``; the others read them. The key is a digest of all
that the scores depend on: the judge's weights and shape, the settings
:func:`~tasks.sft.judge.difficulty` reads, the device and dtype it runs on, the examples
(problem ids, tokens, answer masks), the torch version and :data:`VERSION` of the scoring
code. Another judge (a student judging itself, a retrained teacher), another example or
another setting is another key, so a stage reads only the scores it would have computed.
What a stage computes and its output hash do not change; only when the scores are computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from herd.stages.sft import SFTConfig
from tasks.model.llama4 import Llama4
from tasks.runtime.home import herd_home
from tasks.sft.data import Example
from tasks.training.precision import device_and_dtype

log = logging.getLogger(__name__)

# Bump when the scores' computation changes (tasks/sft/judge.py), so older scores are not read.
VERSION = 1
# What difficulty() reads of the config, whichever judge it is.
JUDGE_FIELDS = ("judge", "judge_batch_size", "passk_samples", "passk_k", "pass_reward", "sample_temperature",
                "max_new_tokens", "seed")


def cache_dir() -> Path:
    return herd_home() / "cache" / "sft_judge"


def weights_digest(model: Llama4) -> str:
    """A digest of the model's shape and every tensor of its state (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(model.config.model_dump_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().view(-1)
        digest.update(f"{name}\0{flat.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def scores_key(config: SFTConfig, model: Llama4, examples: Sequence[Example]) -> str:
    """The digest that names the scores of ``examples`` by ``model`` under ``config`` (see the module docstring)."""
    device, dtype = device_and_dtype(config)
    digest = hashlib.sha256(json.dumps({
        "version": VERSION,
        "torch": torch.__version__,
        "settings": {field: getattr(config, field) for field in JUDGE_FIELDS},
        "device": device.type,
        "dtype": str(dtype),
        "weights": weights_digest(model),
    }, sort_keys=True).encode())
    for example in examples:
        digest.update(json.dumps([example.id, example.input_ids, example.mask]).encode())
    return digest.hexdigest()[:32]


def read_scores(key: str, count: int) -> list[float] | None:
    """The ``count`` scores saved under ``key``, or None when there are none."""
    path = cache_dir() / f"{key}.json"
    try:
        scores = json.loads(path.read_text())["scores"]
    except (OSError, ValueError, KeyError):
        return None
    if not isinstance(scores, list) or len(scores) != count:
        log.warning("sft: %s holds %s scores, not %d; judging again", path, len(scores), count)
        return None
    log.info("sft: the judge's scores of these %d examples read from %s", count, path)
    return [float(s) for s in scores]


def write_scores(key: str, scores: Sequence[float]) -> None:
    """Saves ``scores`` under ``key``, whole or not at all (a stage judging at the same moment writes the same)."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f".{key}.", suffix=".partial", delete=False) as handle:
        json.dump({"scores": list(scores)}, handle)
    os.replace(handle.name, folder / f"{key}.json")
