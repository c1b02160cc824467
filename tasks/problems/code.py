"""Small function-writing tasks, checked by running the answer on test cases in the sandbox.

Each family has a prompt, the reference solution as source (what SFT trains on) and the
same function in Python here to compute the expected outputs. The two are kept honest by
a test that runs every family's reference source through the sandboxed checker. The
parameters (a constant, a letter, a threshold) make many distinct items per family.
Difficulty: 1 one expression, 2 a loop or comprehension, 3 an algorithm.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass
from typing import Any, Callable

from tasks.problems.item import Problem, collect, make_problem

Params = dict[str, Any]


@dataclass(frozen=True)
class Family:
    name: str
    difficulty: int
    signature: str  # "f(x)": the entry point is the name before the bracket
    prompt: str  # what the function returns, formatted with the params
    body: tuple[str, ...]  # the reference solution's lines, formatted with the params
    params: Callable[[random.Random], Params]
    reference: Callable[[Params], Callable[..., Any]]  # the same function, here, for the expected outputs
    inputs: Callable[[random.Random], list[Any]]  # one call's arguments

    @property
    def entry(self) -> str:
        return self.signature.split("(")[0]


def _ints(lo: int, hi: int) -> Callable[[random.Random], list[Any]]:
    return lambda rng: [rng.randint(lo, hi)]


def _int_list(rng: random.Random) -> list[Any]:
    return [[rng.randint(-20, 20) for _ in range(rng.randint(0, 8))]]


def _word(rng: random.Random) -> list[Any]:
    if rng.random() < 0.25:
        half = "".join(rng.choices("abcde", k=rng.randint(1, 3)))
        return [half + half[::-1][rng.randint(0, 1):]]  # palindromes, so is_palindrome sees both answers
    return ["".join(rng.choices(string.ascii_lowercase[:8], k=rng.randint(0, 9)))]


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _recurrence(n: int, a: int, b: int) -> int:
    for _ in range(n):
        a, b = b, a + b
    return a


def _digit_sum(n: int, base: int) -> int:
    total = 0
    while n:
        n, digit = divmod(n, base)
        total += digit
    return total


def _to_base(n: int, base: int) -> str:
    digits = ""
    while n:
        n, digit = divmod(n, base)
        digits = str(digit) + digits
    return digits or "0"


def _fizzbuzz(n: int, a: int, b: int) -> str:
    return "FizzBuzz" if n % (a * b) == 0 else "Fizz" if n % a == 0 else "Buzz" if n % b == 0 else str(n)


def _none(rng: random.Random) -> Params:
    return {}


def _k(lo: int, hi: int, name: str = "k") -> Callable[[random.Random], Params]:
    return lambda rng: {name: rng.randint(lo, hi)}


def _clamp_range(rng: random.Random) -> Params:
    lo = rng.randint(-20, 10)
    return {"lo": lo, "hi": lo + rng.randint(1, 30)}


def _fizz_pair(rng: random.Random) -> Params:
    a, b = rng.sample([2, 3, 5, 7], 2)
    return {"a": a, "b": b, "ab": a * b}


def _rotate(xs: list[int], k: int) -> list[int]:
    return xs[k % len(xs):] + xs[:k % len(xs)] if xs else []


def _shift(s: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in s)


FAMILIES = (
    Family("linear", 1, "f(x)", "returns {a} times x plus {b}", ("return {a} * x + {b}",),
           lambda r: {"a": r.randint(2, 9), "b": r.randint(0, 20)}, lambda p: lambda x: p["a"] * x + p["b"], _ints(-50, 50)),
    Family("power", 1, "power(x)", "returns x to the power of {k}", ("return x ** {k}",),
           _k(2, 5), lambda p: lambda x: x ** p["k"], _ints(-9, 9)),
    Family("multiple", 1, "is_multiple(n)", "returns True if n is divisible by {k}, else False", ("return n % {k} == 0",),
           _k(2, 12), lambda p: lambda n: n % p["k"] == 0, _ints(0, 100)),
    Family("clamp", 1, "clamp(x)", "returns x limited to the range {lo} to {hi} (inclusive)",
           ("return max({lo}, min({hi}, x))",),
           _clamp_range, lambda p: lambda x: max(p["lo"], min(p["hi"], x)), _ints(-40, 50)),
    Family("repeat", 1, "repeat(s)", "returns the string s repeated {k} times", ("return s * {k}",),
           _k(2, 4), lambda p: lambda s: s * p["k"], _word),
    Family("count_above", 2, "count_above(xs)", "returns how many numbers in the list xs are greater than {t}",
           ("return sum(1 for x in xs if x > {t})",),
           _k(-5, 10, "t"), lambda p: lambda xs: sum(1 for x in xs if x > p["t"]), _int_list),
    Family("scale_list", 2, "scale(xs)", "returns a new list with every number in xs multiplied by {k}",
           ("return [x * {k} for x in xs]",),
           _k(2, 9), lambda p: lambda xs: [x * p["k"] for x in xs], _int_list),
    Family("sum_powers", 2, "sum_powers(xs)", "returns the sum of the numbers in xs, each raised to the power {k}",
           ("return sum(x ** {k} for x in xs)",),
           _k(1, 3), lambda p: lambda xs: sum(x ** p["k"] for x in xs), _int_list),
    Family("count_letter", 2, "count_letter(s)", "returns how many times the letter '{c}' occurs in the string s",
           ("return s.count('{c}')",),
           lambda r: {"c": r.choice("abcdefgh")}, lambda p: lambda s: s.count(p["c"]), _word),
    Family("palindrome", 2, "is_palindrome(s)", "returns True if the string s reads the same backwards, else False",
           ("return s == s[::-1]",),
           _none, lambda p: lambda s: s == s[::-1], _word),
    Family("multiples_below", 2, "sum_multiples(n)", "returns the sum of the positive multiples of {k} that are less than n",
           ("return sum(range({k}, n, {k}))",),
           _k(2, 12), lambda p: lambda n: sum(range(p["k"], n, p["k"])), _ints(0, 200)),
    Family("rotate", 2, "rotate(xs)", "returns the list xs rotated left by {k} places (empty stays empty)",
           ("if not xs:", "    return []", "k = {k} % len(xs)", "return xs[k:] + xs[:k]"),
           _k(1, 5), lambda p: lambda xs: _rotate(xs, p["k"]), _int_list),
    Family("caesar", 3, "shift(s)",
           "returns the lower-case string s with every letter moved {k} places forward in the alphabet, wrapping from z to a",
           ("return ''.join(chr((ord(c) - 97 + {k}) % 26 + 97) for c in s)",),
           _k(1, 25), lambda p: lambda s: _shift(s, p["k"]), _word),
    Family("to_base", 3, "to_base(n)", "returns the non-negative integer n written in base {base} as a string of digits",
           ("if n == 0:", "    return '0'", "digits = ''", "while n:", "    digits = str(n % {base}) + digits",
            "    n //= {base}", "return digits"),
           _k(2, 9, "base"), lambda p: lambda n: _to_base(n, p["base"]), _ints(0, 5000)),
    Family("gcd", 3, "gcd(a, b)", "returns the greatest common divisor of the positive integers a and b",
           ("while b:", "    a, b = b, a % b", "return a"),
           _none, lambda p: math.gcd, lambda rng: [rng.randint(1, 500), rng.randint(1, 500)]),
    Family("factorial", 3, "factorial(n)", "returns n factorial (the product 1 * 2 * ... * n; 1 for n = 0)",
           ("result = 1", "for i in range(2, n + 1):", "    result *= i", "return result"),
           _none, lambda p: math.factorial, _ints(0, 15)),
    Family("recurrence", 3, "seq(n)", "returns the n-th term of the sequence t(0) = {a}, t(1) = {b}, t(n) = t(n-1) + t(n-2)",
           ("a, b = {a}, {b}", "for _ in range(n):", "    a, b = b, a + b", "return a"),
           lambda r: {"a": r.randint(0, 3), "b": r.randint(1, 4)}, lambda p: lambda n: _recurrence(n, p["a"], p["b"]),
           _ints(0, 30)),
    Family("digit_sum", 3, "digit_sum(n)", "returns the sum of the digits of the non-negative integer n written in base {base}",
           ("total = 0", "while n:", "    total += n % {base}", "    n //= {base}", "return total"),
           _k(2, 10, "base"), lambda p: lambda n: _digit_sum(n, p["base"]), _ints(0, 10**6)),
    Family("prime", 3, "is_prime(n)", "returns True if n is a prime number, else False",
           ("if n < 2:", "    return False", "d = 2", "while d * d <= n:", "    if n % d == 0:", "        return False",
            "    d += 1", "return True"),
           _none, lambda p: _is_prime, _ints(0, 200)),
    Family("fizzbuzz", 3, "fizzbuzz(n)",
           "returns 'FizzBuzz' if n is divisible by both {a} and {b}, 'Fizz' if only by {a}, 'Buzz' if only by {b}, else str(n)",
           ("if n % {ab} == 0:", "    return 'FizzBuzz'", "if n % {a} == 0:", "    return 'Fizz'", "if n % {b} == 0:",
            "    return 'Buzz'", "return str(n)"),
           _fizz_pair, lambda p: lambda n: _fizzbuzz(n, p["a"], p["b"]), _ints(1, 120)),
)
FAMILIES_BY_NAME = {family.name: family for family in FAMILIES}
TESTS_PER_ITEM = 6


def reference_source(family: Family, params: Params) -> str:
    return f"def {family.signature}:\n" + "".join(f"    {line.format(**params)}\n" for line in family.body)


def make_item(family: Family, params: Params, time_limit_s: float, memory_mb: int,
              allow_unconfined: bool = False) -> Problem:
    fn = family.reference(params)
    # Tests follow from the question alone, so one question is one item (and lands in one split).
    rng = random.Random(f"{family.name}:{sorted(params.items())}")
    calls: dict[str, list[Any]] = {}
    for _ in range(4 * TESTS_PER_ITEM):
        args = family.inputs(rng)
        calls.setdefault(repr(args), args)
        if len(calls) == TESTS_PER_ITEM:
            break
    tests = [{"args": args, "expected": fn(*args)} for args in calls.values()]
    prompt = f"Write a Python function {family.signature} that {family.prompt.format(**params)}."
    answer = f"```python\n{reference_source(family, params)}```"
    args = {"entry": family.entry, "tests": tests, "time_limit_s": time_limit_s, "memory_mb": memory_mb}
    if allow_unconfined:  # only then, so items checked confined keep their ids
        args["allow_unconfined"] = True
    return make_problem("code", family.difficulty, prompt, answer, "code", args, {"family": family.name, **params})


def generate(count: int, seed: int, time_limit_s: float = 2.0, memory_mb: int = 256,
             allow_unconfined: bool = False) -> list[Problem]:
    def draw(rng: random.Random) -> Problem:
        family = rng.choice(FAMILIES)
        return make_item(family, family.params(rng), time_limit_s, memory_mb, allow_unconfined)

    return collect(draw, count, seed, "code")
