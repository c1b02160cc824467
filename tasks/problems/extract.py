"""Getting the answer out of a raw model completion.

Completions arrive as the model wrote them: possibly with the end-of-turn token and
whatever it sampled after it, a code fence, ``Answer: 42``, quotes or a trailing full stop.
Each checker takes candidates from here; none of them rewards a completion for merely
containing the answer somewhere, or listing many guesses would pay.
"""

from __future__ import annotations

import re

# Llama 4 ends a turn with <|eot|> (<|eom|> when a tool call follows); anything after it
# was sampled past the end and is not part of the answer.
_END = re.compile(r"<\|(?:eot|eom|end_of_text)\|>")
_SPECIAL = re.compile(r"<\|[a-z_0-9]+\|>")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PYTHON_TAG = re.compile(r"<\|python_start\|>(.*?)(?:<\|python_end\|>|\Z)", re.S)
_ANSWER_IS = re.compile(r"\b(?:final answer|answer)\s*(?:is|:|=)\s*", re.I)
_WRAPPERS = "`'\"*“”‘’«»"
_NUMBER = re.compile(r"[-−+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def body(completion: str) -> str:
    """The turn as written: up to the first end-of-turn token, other special tokens removed."""
    text = _END.split(completion, maxsplit=1)[0]
    return _SPECIAL.sub("", text).strip()


def tidy(text: str) -> str:
    """Without surrounding quotes, backticks, bold or a final full stop."""
    text = text.strip()
    previous = None
    while previous != text:
        previous = text
        text = text.strip().strip(_WRAPPERS).strip()
        if text.endswith(".") and not text.endswith(".."):
            text = text[:-1]
    return text


def stated(text: str) -> str | None:
    """What follows the last "answer is"/"Answer:", if the reply says it."""
    marks = list(_ANSWER_IS.finditer(text))
    return text[marks[-1].end():].strip() if marks else None


def answer_candidates(completion: str) -> list[str]:
    """The whole reply, the text after the last "answer is"/"Answer:" and its first line, the reply's first line: tidied."""
    text = body(completion)
    candidates = [tidy(text)]
    said = stated(text)
    if said:
        candidates += [tidy(said), tidy(said.splitlines()[0])]
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        candidates.append(tidy(lines[0]))
    return list(dict.fromkeys(c for c in candidates if c))


def final_number(completion: str) -> float | None:
    """The number stated as the answer ("answer is 42"), else the last number in the reply."""
    text = body(completion)
    said = stated(text)
    if said and (numbers := _NUMBER.findall(said)):
        return _to_float(numbers[0])
    numbers = _NUMBER.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def _to_float(number: str) -> float:
    return float(number.replace(",", "").replace("−", "-"))


def code_block(completion: str, entry: str | None = None) -> str:
    """The code to run: a fenced block (the one defining ``entry`` if several), a python-tag block, or the reply."""
    text = _END.split(completion, maxsplit=1)[0]
    blocks = [code for _, code in _FENCE.findall(text)] or _PYTHON_TAG.findall(text)
    if not blocks:
        return _SPECIAL.sub("", text).strip("\n")
    if entry:
        defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", b)]
        if defining:
            return defining[0]
    return blocks[0]
