"""Normalisation and quality filters. A filter answers one question; its name is the drop reason."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import regex

from herd.stages.datamix import DatamixConfig

# C0/C1 controls except tab and newline, plus zero-width and bidi controls that only hide text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize(text: str, form: str) -> str:
    text = unicodedata.normalize(form, text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


class Filter:
    name: str

    def keep(self, text: str) -> bool:
        raise NotImplementedError


@dataclass
class MinChars(Filter):
    minimum: int
    name: str = "too_short"

    def keep(self, text: str) -> bool:
        return len(text) >= self.minimum


@dataclass
class MinWords(Filter):
    """Only for text written with spaces: Chinese, Japanese or Thai have no whitespace words to count."""

    minimum: int
    name: str = "too_few_words"

    def keep(self, text: str) -> bool:
        spaces = text.count(" ") + text.count("\n")
        if spaces < 0.02 * len(text):
            return True
        return len(text.split()) >= self.minimum


_SYMBOL = regex.compile(r"[\p{P}\p{S}]")
_DIGIT = regex.compile(r"\p{Nd}")


def _share(text: str, pattern: regex.Pattern) -> float:
    # After normalize() the only whitespace left is spaces and newlines.
    visible = len(text) - text.count(" ") - text.count("\n") - text.count("\t")
    return len(pattern.findall(text)) / max(1, visible)


@dataclass
class MaxSymbolRatio(Filter):
    maximum: float
    name: str = "too_many_symbols"

    def keep(self, text: str) -> bool:
        return _share(text, _SYMBOL) <= self.maximum


@dataclass
class MaxDigitRatio(Filter):
    maximum: float
    name: str = "too_many_digits"

    def keep(self, text: str) -> bool:
        return _share(text, _DIGIT) <= self.maximum


@dataclass
class MaxDuplicateLines(Filter):
    """Boilerplate and spam repeat lines; a document of a few lines is not judged."""

    maximum: float
    name: str = "repeated_lines"

    def keep(self, text: str) -> bool:
        lines = [line for line in text.split("\n") if line]
        if len(lines) < 3:
            return True
        repeats = sum(count - 1 for count in Counter(lines).values())
        return repeats / len(lines) <= self.maximum


def quality_filters(config: DatamixConfig) -> list[Filter]:
    return [
        MinChars(config.min_chars),
        MinWords(config.min_words),
        MaxSymbolRatio(config.max_symbol_ratio),
        MaxDigitRatio(config.max_digit_ratio),
        MaxDuplicateLines(config.max_duplicate_line_ratio),
    ]
