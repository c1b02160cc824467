"""Per-language token budgets by temperature sampling, with a floor, a cap and a repetition limit.

With ``n_l`` available tokens in language ``l``, the target share is ``n_l**(1/tau) / sum``:
tau = 1 keeps the natural distribution, larger tau flattens it towards uniform (the
multilingual up-sampling of low-resource languages). Targets are then raised to the floor,
lowered to the cap, and limited to ``max_repeat`` epochs of what exists.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from herd.stages.datamix import DatamixConfig


@dataclass(frozen=True)
class Budget:
    lang: str
    available: int
    target: int
    repeat: float  # expected copies of each document: <1 down-samples, >1 repeats


def budgets(available: dict[str, int], config: DatamixConfig) -> dict[str, Budget]:
    langs = sorted(lang for lang, tokens in available.items() if tokens > 0)
    if not langs:
        return {}
    total = config.total_tokens or sum(available[lang] for lang in langs)
    weights = {lang: available[lang] ** (1.0 / config.temperature) for lang in langs}
    norm = sum(weights.values())
    plan = {}
    for lang in langs:
        target = total * weights[lang] / norm
        target = max(target, config.floor_tokens)
        if config.cap_tokens is not None:
            target = min(target, config.cap_tokens)
        target = min(target, available[lang] * config.max_repeat)
        plan[lang] = Budget(lang, available[lang], int(round(target)), target / available[lang])
    return plan


def copies(doc_id: str, repeat: float, seed: int) -> int:
    """How many times a document enters the mix: ``floor(repeat)`` plus one more with the fractional chance.

    The draw depends only on the seed and the document id, so the mix is the same whatever
    the order or the number of workers.
    """
    whole = math.floor(repeat)
    fraction = repeat - whole
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    draw = int.from_bytes(digest, "little") / 2**64
    return whole + (1 if draw < fraction else 0)


def estimate_tokens(text: str, bytes_per_token: float) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / bytes_per_token))
