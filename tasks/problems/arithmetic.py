"""Arithmetic with a numeric checker: from ``17+25=`` up to multi-step expressions.

Difficulty follows the digits a model must carry: 1 for single digits, one more per digit
of the larger operand, more for products and for three-operand expressions. Terse prompts
(``17+25=``) dominate the easy end because a nano model learns that format in a few
hundred steps; worded prompts teach it that the same question has other surfaces.
"""

from __future__ import annotations

import random

from tasks.problems.item import Problem, collect, make_problem

_WORDS = {"+": "plus", "-": "minus", "*": "times"}
_TEMPLATES = ("{expr}=", "{expr} =", "What is {words}?", "Compute {expr}.", "Calculate: {expr}")


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _sizes(rng: random.Random, top: int) -> tuple[int, int]:
    # The larger operand's digits uniform, so that every difficulty is about equally common.
    larger = rng.randint(1, top)
    sizes = (larger, rng.randint(1, larger))
    return sizes if rng.random() < 0.5 else sizes[::-1]


def _binary(rng: random.Random, max_digits: int) -> tuple[str, str, int, int, dict]:
    op = rng.choice("+-*")
    # Products grow fast: cap them so that the hardest stays within reach of the other families.
    da, db = _sizes(rng, max(1, (max_digits + 1) // 2) if op == "*" else max_digits)
    a, b = _operand(rng, da), _operand(rng, db)
    expr = f"{a}{op}{b}"
    words = f"{a} {_WORDS[op]} {b}"
    difficulty = da + db if op == "*" else max(da, db)
    return expr, words, eval_int(a, op, b), difficulty, {"family": op, "digits": max(da, db)}


def _expression(rng: random.Random, max_digits: int) -> tuple[str, str, int, int, dict]:
    digits = rng.randint(1, max(1, max_digits - 1))
    a, b, c = (_operand(rng, digits) for _ in range(3))
    op1, op2 = rng.choice("+-*"), rng.choice("+-*")
    if rng.random() < 0.5:
        expr, value = f"({a}{op1}{b}){op2}{c}", eval_int(eval_int(a, op1, b), op2, c)
    else:
        # Precedence decides the order here: a*b before +/-.
        value = eval_int(a, op1, eval_int(b, op2, c)) if op2 == "*" and op1 != "*" else eval_int(eval_int(a, op1, b), op2, c)
        expr = f"{a}{op1}{b}{op2}{c}"
    return expr, expr, value, 3 + digits, {"family": "expression", "digits": digits}


def eval_int(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def generate(count: int, seed: int, max_digits: int = 4) -> list[Problem]:
    def draw(rng: random.Random) -> Problem:
        expr, words, value, difficulty, meta = (_expression if rng.random() < 0.2 else _binary)(rng, max_digits)
        easy = difficulty <= 2
        template = _TEMPLATES[0] if easy and rng.random() < 0.6 else rng.choice(_TEMPLATES)
        prompt = template.format(expr=expr, words=words)
        return make_problem("arithmetic", difficulty, prompt, str(value), "numeric", {"answer": value}, meta)

    return collect(draw, count, seed, "arithmetic")
