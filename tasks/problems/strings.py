"""String manipulation on short words: reverse, change case, count, sort, remove letters.

Words come from the caller (the build passes lower-case words of the English UDHR, which
the tokenizer has seen) or, without any, from seeded random letters. Difficulty is the
word's length, plus one for operations that need every character in a new order (reverse,
sort) or counted; a byte-level BPE sees whole words as one or two tokens, so those are the
operations a small model finds hard.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

from tasks.problems.item import Problem, collect, make_problem

VOWELS = "aeiou"


@dataclass(frozen=True)
class Operation:
    name: str
    templates: tuple[str, ...]
    apply: Callable[[str, str], str | int]  # (word, letter) -> answer
    extra: int  # added to the length-based difficulty


OPERATIONS = (
    Operation("reverse", ("reverse: {w}", "Reverse the word {w}.", "Write {w} backwards."), lambda w, _: w[::-1], 1),
    Operation("upper", ("uppercase: {w}", "Write {w} in capital letters."), lambda w, _: w.upper(), 0),
    Operation("capitalize", ("capitalize: {w}", "Capitalize the first letter of {w}."), lambda w, _: w.capitalize(), 0),
    Operation("length", ("length: {w}", "How many letters are in the word {w}?"), lambda w, _: len(w), 0),
    Operation("count", ("count {c} in {w}", "How many times does the letter {c} appear in {w}?"),
              lambda w, c: w.count(c), 1),
    Operation("sort", ("sort the letters: {w}", "Sort the letters of {w} alphabetically."),
              lambda w, _: "".join(sorted(w)), 2),
    Operation("remove_vowels", ("remove vowels: {w}", "Remove the vowels (a, e, i, o, u) from {w}."),
              lambda w, _: "".join(ch for ch in w if ch not in VOWELS), 1),
    Operation("first_last", ("first and last letter of {w}", "Give the first and the last letter of {w}."),
              lambda w, _: w[0] + w[-1], 0),
)


def _length_difficulty(word: str) -> int:
    return 1 if len(word) <= 3 else 2 if len(word) <= 5 else 3 if len(word) <= 8 else 4


def _random_word(rng: random.Random, max_length: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, max_length)))


def usable_words(words: list[str], max_length: int) -> list[str]:
    return sorted({w for w in words if 2 <= len(w) <= max_length and w.isascii() and w.isalpha() and w.islower()})


def generate(count: int, seed: int, words: list[str] | None = None, max_length: int = 12) -> list[Problem]:
    pool = usable_words(words or [], max_length)

    def draw(rng: random.Random) -> Problem:
        word = rng.choice(pool) if pool and rng.random() < 0.8 else _random_word(rng, max_length)
        # Counting a letter that is there is the common case; an absent one (answer 0) now and then.
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
        op = rng.choice(OPERATIONS)
        while op.apply(word, letter) == "":  # "aeiou" without vowels: nothing to check
            op = rng.choice(OPERATIONS)
        prompt = rng.choice(op.templates).format(w=word, c=letter)
        answer = op.apply(word, letter)
        difficulty = _length_difficulty(word) + op.extra
        meta = {"family": op.name, "word": word, "length": len(word)}
        if isinstance(answer, int):
            return make_problem("strings", difficulty, prompt, str(answer), "numeric", {"answer": answer}, meta)
        return make_problem("strings", difficulty, prompt, answer, "exact", {"answer": answer, "case_sensitive": True}, meta)

    return collect(draw, count, seed, "strings")
