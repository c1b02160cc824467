"""Language codes, metadata and offline identification.

Codes are ISO 639-3 throughout (``eng``, ``cmn``); metadata (name, script) comes from
``langcodes``/``language_data``. Identification uses CLD2 (``pycld2``), whose model ships
inside the wheel: no download at run time. CLD2 knows ~165 languages; a document labelled
with a language CLD2 cannot represent is kept on its label, never dropped for that reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import langcodes
import pycld2


@dataclass(frozen=True)
class LanguageInfo:
    code: str  # ISO 639-3
    name: str
    script: str


@functools.lru_cache(maxsize=4096)
def to_iso639_3(tag: str) -> str | None:
    """``en``, ``eng``, ``pt-BR`` -> ``eng``/``por``; ``und`` or empty -> None; raises ValueError if unknown."""
    tag = tag.strip()
    if not tag or tag.lower() in {"und", "zxx", "mul", "mis"}:
        return None
    if not langcodes.tag_is_valid(tag):
        raise ValueError(tag)
    language = langcodes.Language.get(tag)
    if not language.language:
        raise ValueError(tag)
    return language.to_alpha3()


@functools.lru_cache(maxsize=4096)
def info(code: str) -> LanguageInfo:
    language = langcodes.Language.get(code)
    return LanguageInfo(code, language.display_name(), language.maximize().script or "")


@functools.lru_cache(maxsize=4096)
def _macro(code: str) -> str:
    """Collapse individual languages into their macrolanguage (``cmn`` -> ``zh``) for comparing labels."""
    return langcodes.standardize_tag(code, macro=True).split("-")[0]


@functools.cache
def _detectable() -> frozenset[str]:
    names = set(pycld2.DETECTED_LANGUAGES)
    codes = set()
    for name, code in pycld2.LANGUAGES:
        if name in names and code not in {"un", "xxx"} and not code.startswith("xx-"):
            try:
                three = to_iso639_3(code)
            except ValueError:
                continue
            if three:
                codes.add(_macro(three))
    return frozenset(codes)


def identifiable(code: str) -> bool:
    """Whether CLD2 can name this language at all."""
    return _macro(code) in _detectable()


def same_language(a: str, b: str) -> bool:
    return _macro(a) == _macro(b)


@dataclass(frozen=True)
class Guess:
    code: str | None  # ISO 639-3, None if CLD2 found nothing
    reliable: bool
    candidates: tuple[str, ...]  # up to three, best first
    percent: int = 0  # share of the text CLD2 gives to the best candidate


def identify(text: str) -> Guess:
    try:
        reliable, _, details = pycld2.detect(text, bestEffort=True)
    except pycld2.error:
        return Guess(None, False, ())
    candidates = []
    top_percent = details[0][2] if details else 0
    for _, cld_code, percent, _ in details:
        if cld_code == "un" or percent == 0:
            continue
        try:
            three = to_iso639_3(cld_code)
        except ValueError:
            continue
        if three:
            candidates.append(three)
    return Guess(candidates[0] if candidates else None, bool(reliable and candidates), tuple(candidates), top_percent)


def distance(a: str, b: str) -> int:
    """CLDR language-matching distance (langcodes): below ~60 the two are close relatives or variants."""
    return langcodes.tag_distance(a, b)
