"""Problems from the UDHR's aligned articles: translate, identify the language, continue.

One declaration per language (the corpus has dialects and second translations: the one
named by the language's own code is preferred, then the most complete). Each article loses
its heading line ("Article 1"), so that no task is answered by copying a number. Articles
are aligned across languages; so are their paragraphs when both sides have the same number,
which gives translation pairs short enough for a nano model's window.

Every item records its ``article``: the split holds out whole articles, so the French of
an eval article is never a training target while its English is an eval prompt.
"""

from __future__ import annotations

import functools
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tasks.problems.item import Problem, collect, make_problem


@dataclass(frozen=True)
class Declaration:
    lang: str
    code: str  # the declaration's own code in the corpus, e.g. cmn_hans
    articles: dict[str, list[str]]  # article number -> its paragraphs, heading removed

    @functools.cached_property
    def spaced(self) -> bool:
        """Whether words are separated by spaces; Han, Thai and the like are cut by characters instead."""
        text = " ".join(p for ps in self.articles.values() for p in ps)
        return text.count(" ") * 12 > len(text)


def _records(path: Path) -> Iterator[dict]:
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        with file.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def _paragraphs(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[1:] if len(lines) > 1 else lines


def load_declarations(path: Path) -> dict[str, Declaration]:
    """``lang -> Declaration`` from the UDHR JSONL (a file or a folder of them); ``und`` is left out."""
    by_code: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(dict)
    for record in _records(path):
        lang, article = record.get("lang", "und"), record.get("article")
        if lang == "und" or article is None:
            continue
        code = record["id"].removeprefix("udhr-").rsplit("-", 1)[0]
        by_code[(lang, code)][str(article)] = _paragraphs(record["text"])
    chosen: dict[str, Declaration] = {}
    for (lang, code), articles in sorted(by_code.items()):
        current = chosen.get(lang)
        if current is None or _preference(lang, code, articles) < _preference(lang, current.code, current.articles):
            chosen[lang] = Declaration(lang, code, articles)
    return chosen


def _preference(lang: str, code: str, articles: dict) -> tuple:
    # Lower is better: the language's own code (fra, not the Welche dialect 068), a variant of it
    # (cmn_hans), a named edition before a numbered second translation, then completeness.
    return (code != lang, not code.startswith(lang), code[:1].isdigit(), -len(articles), code)


def _units(text: str, spaced: bool) -> list[str]:
    return text.split() if spaced else list(text)


def _join(units: list[str], spaced: bool) -> str:
    return (" " if spaced else "").join(units)


def _bucket(value: int, bounds: tuple[int, ...]) -> int:
    """1 + the number of bounds that ``value`` exceeds."""
    return 1 + sum(value > b for b in bounds)


def translation_pairs(declarations: dict[str, Declaration], languages: Iterable[str], max_chars: int):
    """``(src, tgt, article, source text, target text)`` for every ordered pair, paragraph-aligned where possible."""
    present = [lang for lang in sorted(set(languages)) if lang in declarations]
    for src in present:
        for tgt in present:
            if src == tgt:
                continue
            a, b = declarations[src].articles, declarations[tgt].articles
            for article in sorted(set(a) & set(b)):
                pairs = list(zip(a[article], b[article])) if len(a[article]) == len(b[article]) else \
                    [("\n".join(a[article]), "\n".join(b[article]))]
                for source, target in pairs:
                    if len(source) <= max_chars and len(target) <= max_chars and source != target:
                        yield src, tgt, article, source, target


def language_name(code: str) -> str:
    from tasks import languages

    return languages.info(code).name


def translate(declarations: dict[str, Declaration], languages: list[str], count: int, seed: int,
              max_chars: int = 300) -> list[Problem]:
    pool = list(translation_pairs(declarations, languages, max_chars))
    if not pool:
        return []

    def draw(rng: random.Random) -> Problem:
        src, tgt, article, source, target = rng.choice(pool)
        prompt = f"Translate from {language_name(src)} to {language_name(tgt)}:\n{source}"
        return make_problem("translate", _bucket(len(target), (60, 120, 200, 280)), prompt, target, "chrf",
                            {"reference": target}, {"src": src, "tgt": tgt, "article": article})

    return collect(draw, count, seed, "translate")


def _passages(declarations: dict[str, Declaration], languages: list[str]) -> list[tuple[Declaration, str, str]]:
    langs = [lang for lang in sorted(set(languages) or declarations) if lang in declarations]
    return [(declarations[lang], article, paragraph)
            for lang in langs for article, paragraphs in sorted(declarations[lang].articles.items())
            for paragraph in paragraphs]


def language_id(declarations: dict[str, Declaration], languages: list[str], count: int, seed: int) -> list[Problem]:
    passages = _passages(declarations, languages)
    if not passages:
        return []

    def draw(rng: random.Random) -> Problem:
        declaration, article, paragraph = rng.choice(passages)
        units = _units(paragraph, declaration.spaced)
        scale = 1 if declaration.spaced else 3  # characters of Han carry about a third of a word each
        width = min(len(units), rng.randint(3, 20) * scale)
        start = rng.randint(0, len(units) - width)
        snippet = _join(units[start:start + width], declaration.spaced)
        prompt = f"Which language is this? Answer with its ISO 639-3 code.\n{snippet}"
        # Shorter snippets give less evidence: difficulty falls as the snippet grows.
        difficulty = 6 - _bucket(width // scale, (4, 7, 11, 15))
        return make_problem("language_id", difficulty, prompt, declaration.lang, "language_id",
                            {"answer": declaration.lang}, {"lang": declaration.lang, "article": article})

    return collect(draw, count, seed, "language_id")


def continuation(declarations: dict[str, Declaration], languages: list[str], count: int, seed: int) -> list[Problem]:
    """Given a paragraph's first words, its next few; the opening is made long enough to occur once in the declaration."""
    passages = _passages(declarations, languages)
    texts = {d.lang: "\n".join(p for ps in d.articles.values() for p in ps) for d in declarations.values()}
    if not passages:
        return []

    def draw(rng: random.Random) -> Problem | None:
        declaration, article, paragraph = rng.choice(passages)
        spaced = declaration.spaced
        units = _units(paragraph, spaced)
        scale = 1 if spaced else 2
        want = rng.randint(1, 8) * scale
        prefix_len = rng.randint(3, 10) * scale
        while prefix_len + want <= len(units) and texts[declaration.lang].count(_join(units[:prefix_len], spaced)) > 1:
            prefix_len += scale
        if prefix_len + want > len(units):  # no opening of this paragraph is unique with room left to continue
            return None
        prefix, target = _join(units[:prefix_len], spaced), _join(units[prefix_len:prefix_len + want], spaced)
        unit = "word" if spaced else "character"
        prompt = f"Continue this text with its next {f'{want} {unit}s' if want > 1 else unit}:\n{prefix}"
        return make_problem("continue", _bucket(want // scale, (1, 3, 5, 7)), prompt, target, "chrf",
                            {"reference": target}, {"lang": declaration.lang, "article": article})

    return collect(draw, count, seed, "continue")
