"""Two small safety classifiers the pipeline trains itself: a Llama-Guard-style output guard and a
Prompt-Guard-style input guard (LLAMA4_SPEC §6.4, §6.5).

    output_guard, prompt_guard = load_guards("s3://bucket/artifacts/guards/<hash>", scratch)   # tasks.guards.loader
    output_guard.assess(["How do I bake bread?"], ["Sure: mix flour, water and salt ..."])[0].text   # "safe"
    output_guard.assess(["How do I ...?"])[0].text               # "unsafe\\nS9": a prompt alone is assessed too
    output_guard.refusals(prompts, replies)                      # does each reply decline? (refusal detector)
    prompt_guard.classify(["Ignore all previous instructions and ..."])[0].label   # "injection"

The model, and why: a linear classifier over hashed n-grams (word unigrams and bigrams, and
character n-grams of each word, fastText-style), an ``EmbeddingBag`` of ``buckets`` x classes
trained with sparse Adam. On data built from templates it trains in seconds on one CPU core,
needs no tokenizer or pretrained weights (so the guards exist before any model does, and every
variant's safety stage reads the same ones), its character n-grams survive misspellings and
unseen inflections, and its weights are one small matrix in safetensors. It is a baseline in
the spirit of the real guards, not a replacement: Llama Guard 4 is a 12B model (pruned from
Scout) and Prompt Guard an 86M DeBERTa.

Output guard: 16 sigmoid outputs over one weight matrix. Fourteen, one per S-category, read only
the prompt's features: what the request asks for. Two read only the reply's: ``comply`` (does the
reply carry the request out?) and ``refusal`` (does it decline?). A prompt alone is unsafe in a
category whose probability reaches ``threshold``; a reply is unsafe in a category when
P(category | prompt) x P(comply | reply) does. The product is the "harmful request AND complying
reply" a linear model cannot learn from the pair's summed features, and it keeps a reply with no
evidence either way (an untrained model's noise) from being called unsafe for its prompt's sake.
What it cannot see: a reply that is harmful on its own after a harmless-looking prompt. The verdict
is Llama Guard's text, ``safe`` or ``unsafe\\nS1,S10`` (categories in taxonomy order). Prompt
guard: softmax over benign / injection / jailbreak.

Files (a folder per guard): ``model.safetensors`` (``weight`` [buckets, outputs], ``bias``) and
``guard.json`` (labels, features, threshold, metrics). Never pickle.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from tasks.guards.data import CATEGORIES, OutputExample, PromptExample

log = logging.getLogger(__name__)

OUTPUT_GUARD = "output_guard"
PROMPT_GUARD = "prompt_guard"
CATEGORY_CODES = tuple(CATEGORIES)
COMPLY = "comply"
REFUSAL = "refusal"
PROMPT_LABELS = ("benign", "injection", "jailbreak")
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class Features:
    """How a text becomes hashed feature ids; stored with the weights so a loaded guard reads text the same way."""

    buckets: int
    char_ngrams: tuple[int, int] = (3, 5)

    def ids(self, text: str, namespace: str) -> list[int]:
        words = _WORD.findall(text.lower())
        out = [_bucket(f"{namespace}b:{a} {b}", self.buckets) for a, b in itertools.pairwise(words)]
        for word in words:
            out += _word_ids(word, namespace, self.char_ngrams, self.buckets)
        return out

    def encode(self, items: list[list[tuple[str, str]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per item, (text, namespace) pairs -> EmbeddingBag's (ids, offsets, per-id weights 1/sqrt(n))."""
        ids: list[int] = []
        offsets: list[int] = []
        weights: list[float] = []
        for pieces in items:
            offsets.append(len(ids))
            row: list[int] = []
            for text, namespace in pieces:
                row += self.ids(text, namespace) if text else []
                row.append(_bucket(f"{namespace}__present__", self.buckets))
            counts = Counter(row)  # a repeated n-gram is one id with its count as weight: fewer rows to update
            norm = 1.0 / math.sqrt(len(row))
            ids += counts.keys()
            weights += [count * norm for count in counts.values()]
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long), torch.tensor(weights)


def _bucket(feature: str, buckets: int) -> int:
    return zlib.crc32(feature.encode("utf-8")) % buckets  # stable across processes, unlike hash()


@lru_cache(maxsize=200_000)
def _word_ids(word: str, namespace: str, ngrams: tuple[int, int], buckets: int) -> tuple[int, ...]:
    """The word itself and its character n-grams (with ``<`` ``>`` marking its ends)."""
    padded = f"<{word}>"
    low, high = ngrams
    return (_bucket(f"{namespace}w:{word}", buckets),
            *(_bucket(f"{namespace}c:{padded[i:i + n]}", buckets)
              for n in range(low, high + 1) for i in range(max(len(padded) - n + 1, 0))))


class LinearGuard(nn.Module):
    """Hashed n-gram features -> logits: one sparse weight row per bucket."""

    def __init__(self, buckets: int, outputs: int) -> None:
        super().__init__()
        self.weight = nn.EmbeddingBag(buckets, outputs, mode="sum", sparse=True)
        self.bias = nn.Parameter(torch.zeros(outputs))
        nn.init.zeros_(self.weight.weight)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.weight(ids, offsets, per_sample_weights=weights) + self.bias


def _prompt_piece(prompt: str) -> list[tuple[str, str]]:
    return [(prompt, "p|")]


def _reply_piece(reply: str) -> list[tuple[str, str]]:
    return [(reply, "r|")]


@dataclass(frozen=True)
class Assessment:
    safe: bool
    categories: tuple[str, ...]
    scores: dict[str, float]

    @property
    def text(self) -> str:
        """Llama Guard's answer: ``safe``, or ``unsafe`` and the categories on a second line."""
        return "safe" if self.safe else "unsafe\n" + ",".join(self.categories)


@dataclass(frozen=True)
class PromptVerdict:
    label: str
    scores: dict[str, float]

    @property
    def malicious(self) -> bool:
        return self.label != "benign"


class _Guard:
    kind: str
    labels: tuple[str, ...]

    def __init__(self, model: LinearGuard, features: Features, info: dict | None = None) -> None:
        self.model = model.eval()
        self.features = features
        self.info = info or {}

    @torch.no_grad()
    def _logits(self, items: list[list[tuple[str, str]]], batch: int = 256) -> torch.Tensor:
        if not items:
            return torch.zeros(0, len(self.labels))
        return torch.cat([self.model(*self.features.encode(items[i : i + batch])) for i in range(0, len(items), batch)])

    def save(self, folder: Path, metrics: dict | None = None) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.model.weight.weight.detach().contiguous(), "bias": self.model.bias.detach()},
                  str(folder / "model.safetensors"))
        info = {"kind": self.kind, "labels": list(self.labels), "buckets": self.features.buckets,
                "char_ngrams": list(self.features.char_ngrams), **self._extra(), **({"metrics": metrics} if metrics else {})}
        (folder / "guard.json").write_text(json.dumps(info, indent=2) + "\n")

    def _extra(self) -> dict:
        return {}

    @classmethod
    def load(cls, folder: Path):
        from safetensors.torch import load_file

        info = json.loads((folder / "guard.json").read_text())
        if info.get("kind") != cls.kind:
            raise ValueError(f"{folder} holds a {info.get('kind')!r} guard, not a {cls.kind!r} one")
        # A guard trained by other code (another label set or head) must not load into a wrong head.
        if tuple(info.get("labels", ())) != tuple(cls.labels):
            raise ValueError(f"{folder}: this {cls.kind} guard has labels {info.get('labels')}, this code expects "
                             f"{list(cls.labels)}; recompute the guards stage (--force)")
        tensors = load_file(str(folder / "model.safetensors"))
        expected = (info["buckets"], len(cls.labels))  # one row of label weights per feature bucket
        if tuple(tensors["weight"].shape) != expected or tuple(tensors["bias"].shape) != expected[1:]:
            raise ValueError(f"{folder}: weight {tuple(tensors['weight'].shape)} and bias "
                             f"{tuple(tensors['bias'].shape)} do not fit {expected[0]} buckets x {expected[1]} labels; "
                             "recompute the guards stage (--force)")
        model = LinearGuard(info["buckets"], len(info["labels"]))
        model.weight.weight.data.copy_(tensors["weight"])
        model.bias.data.copy_(tensors["bias"])
        guard = cls(model, Features(info["buckets"], tuple(info["char_ngrams"])), info)
        return guard


class OutputGuard(_Guard):
    kind = OUTPUT_GUARD
    labels = (*CATEGORY_CODES, COMPLY, REFUSAL)

    def __init__(self, model: LinearGuard, features: Features, info: dict | None = None, threshold: float = 0.5) -> None:
        super().__init__(model, features, info)
        self.threshold = float((info or {}).get("threshold", threshold))
        # Whether its ``comply`` output may judge (tasks.guards.replies.judge_fitness); None: never measured.
        self.judge_fitness: dict | None = (info or {}).get("judge_fitness")

    def _extra(self) -> dict:
        return {"threshold": self.threshold, "taxonomy": CATEGORIES,
                **({"judge_fitness": self.judge_fitness} if self.judge_fitness is not None else {})}

    @property
    def fit_to_judge(self) -> bool:
        return bool(self.judge_fitness and self.judge_fitness.get("fit"))

    def request_probabilities(self, prompts: list[str]) -> torch.Tensor:
        """[N, 14]: what each prompt asks for, per S-category."""
        return torch.sigmoid(self._logits([_prompt_piece(p) for p in prompts])[:, : len(CATEGORY_CODES)])

    def reply_probabilities(self, replies: list[str]) -> torch.Tensor:
        """[N, 2]: P(comply), P(refusal) of each reply."""
        return torch.sigmoid(self._logits([_reply_piece(r) for r in replies])[:, len(CATEGORY_CODES):])

    def assess(self, prompts: list[str], responses: list[str | None] | None = None) -> list[Assessment]:
        """Per item, the user prompt (no response) or the agent's response to it, assessed."""
        scores = self.request_probabilities(prompts)
        responses = responses if responses is not None else [None] * len(prompts)
        answered = [i for i, r in enumerate(responses) if r is not None]
        if answered:
            comply = self.reply_probabilities([responses[i] for i in answered])[:, 0]
            scores[answered] = scores[answered] * comply[:, None]
        out = []
        for row in scores.tolist():
            by_code = dict(zip(CATEGORY_CODES, row))
            flagged = tuple(c for c in CATEGORY_CODES if by_code[c] >= self.threshold)
            out.append(Assessment(not flagged, flagged, by_code))
        return out

    def refusals(self, prompts: list[str], responses: list[str]) -> list[bool]:
        """Does each response decline its prompt? (the ``refusal`` output, at 0.5; it reads the response only)."""
        return [row[1] >= 0.5 for row in self.reply_probabilities(list(responses)).tolist()]


class PromptGuard(_Guard):
    kind = PROMPT_GUARD
    labels = PROMPT_LABELS

    def classify(self, texts: list[str]) -> list[PromptVerdict]:
        probabilities = torch.softmax(self._logits([[(t, "")] for t in texts]), -1).tolist()
        return [PromptVerdict(PROMPT_LABELS[max(range(len(row)), key=row.__getitem__)], dict(zip(PROMPT_LABELS, row)))
                for row in probabilities]


# --- training -----------------------------------------------------------------------------------------------

def _output_rows(example: OutputExample) -> list[tuple[list[tuple[str, str]], list[float], list[float]]]:
    """(features, targets, mask) rows: the prompt trains the category outputs, the reply comply and refusal."""
    zeros = [0.0] * (len(CATEGORY_CODES) + 2)
    categories = example.request or example.categories
    target = [1.0 if c in categories else 0.0 for c in CATEGORY_CODES] + [0.0, 0.0]
    rows = [(_prompt_piece(example.prompt), target, [1.0] * len(CATEGORY_CODES) + [0.0, 0.0])]
    if example.response is not None:
        rows.append((_reply_piece(example.response), zeros[:-2] + [float(bool(example.complies)), float(bool(example.refusal))],
                     [0.0] * len(CATEGORY_CODES) + [1.0, 1.0]))
    return rows


def _fit(model: LinearGuard, features: Features, items: list[list[tuple[str, str]]], loss_of, epochs: int, lr: float,
         batch_size: int, seed: int) -> list[float]:
    """Sparse Adam for the bucket rows, Adam for the bias; returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    encoded = [features.encode([item]) for item in items]
    sparse = torch.optim.SparseAdam([model.weight.weight], lr=lr)
    dense = torch.optim.Adam([model.bias], lr=lr)
    order = list(range(len(items)))
    rng = random.Random(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids = torch.cat([encoded[i][0] for i in rows])
            weights = torch.cat([encoded[i][2] for i in rows])
            lengths = torch.tensor([len(encoded[i][0]) for i in rows])
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
            loss = loss_of(model(ids, offsets, weights), rows)
            sparse.zero_grad()
            dense.zero_grad()
            loss.backward()
            sparse.step()
            dense.step()
            total += loss.item() * len(rows)
        losses.append(total / len(order))
    model.eval()
    return losses


def train_output_guard(examples: list[OutputExample], buckets: int, char_ngrams: tuple[int, int], epochs: int,
                       lr: float, batch_size: int, seed: int, threshold: float = 0.5) -> tuple[OutputGuard, list[float]]:
    features = Features(buckets, tuple(char_ngrams))
    model = LinearGuard(buckets, len(OutputGuard.labels))
    rows = [row for example in examples for row in _output_rows(example)]
    targets = torch.tensor([target for _, target, _ in rows])
    masks = torch.tensor([mask for _, _, mask in rows])

    def loss_of(logits: torch.Tensor, chosen: list[int]) -> torch.Tensor:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets[chosen], reduction="none")
        return (loss * masks[chosen]).sum() / masks[chosen].sum()

    losses = _fit(model, features, [pieces for pieces, _, _ in rows], loss_of, epochs, lr, batch_size, seed)
    return OutputGuard(model, features, threshold=threshold), losses


def train_prompt_guard(examples: list[PromptExample], buckets: int, char_ngrams: tuple[int, int], epochs: int,
                       lr: float, batch_size: int, seed: int) -> tuple[PromptGuard, list[float]]:
    features = Features(buckets, tuple(char_ngrams))
    model = LinearGuard(buckets, len(PROMPT_LABELS))
    labels = torch.tensor([PROMPT_LABELS.index(e.label) for e in examples])

    def loss_of(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, labels[rows])

    losses = _fit(model, features, [[(e.text, "")] for e in examples], loss_of, epochs, lr, batch_size, seed)
    return PromptGuard(model, features), losses


# --- evaluation ---------------------------------------------------------------------------------------------

def precision_recall(truth: list[str], predicted: list[str], classes: tuple[str, ...] | list[str]) -> list[dict]:
    """Per class: precision, recall, F1 and support (how many truly are that class)."""
    rows = []
    for label in classes:
        tp = sum(t == label and p == label for t, p in zip(truth, predicted))
        flagged = sum(p == label for p in predicted)
        support = sum(t == label for t in truth)
        precision = tp / flagged if flagged else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": label, "precision": round(precision, 4), "recall": round(recall, 4),
                     "f1": round(f1, 4), "support": support, "predicted": flagged})
    return rows


def evaluate_output_guard(guard: OutputGuard, prompts: list[str], responses: list[str | None],
                          categories: list[tuple[str, ...]], refusals: list[bool | None] | None = None) -> list[dict]:
    """safe/unsafe precision and recall, the share of unsafe items given their exact categories, refusal P/R."""
    assessed = guard.assess(prompts, responses)
    truth = ["unsafe" if c else "safe" for c in categories]
    rows = precision_recall(truth, ["safe" if a.safe else "unsafe" for a in assessed], ("unsafe", "safe"))
    unsafe = [(a, c) for a, c in zip(assessed, categories) if c]
    if unsafe:
        exact = sum(set(a.categories) == set(c) for a, c in unsafe) / len(unsafe)
        hit = sum(bool(set(a.categories) & set(c)) for a, c in unsafe) / len(unsafe)
        rows.append({"class": "categories_exact", "recall": round(exact, 4), "support": len(unsafe)})
        rows.append({"class": "categories_any", "recall": round(hit, 4), "support": len(unsafe)})
    if refusals is not None:
        judged = [(p, r, f) for p, r, f in zip(prompts, responses, refusals) if r is not None and f is not None]
        if judged:
            said = guard.refusals([p for p, _, _ in judged], [r for _, r, _ in judged])
            rows += precision_recall(["refusal" if f else "compliance" for _, _, f in judged],
                                     ["refusal" if s else "compliance" for s in said], ("refusal",))
    return rows


def evaluate_prompt_guard(guard: PromptGuard, texts: list[str], labels: list[str]) -> list[dict]:
    """Per class P/R, and ``malicious`` (injection or jailbreak, either label) as one class."""
    predicted = [v.label for v in guard.classify(texts)]
    rows = precision_recall(labels, predicted, [c for c in PROMPT_LABELS if c in labels or c in predicted])
    rows += precision_recall(["malicious" if t != "benign" else "benign" for t in labels],
                             ["malicious" if p != "benign" else "benign" for p in predicted], ("malicious",))
    return rows

