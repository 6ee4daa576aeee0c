"""The programmatic teacher: small STEM problems with short, regular, step-by-step worked solutions.

A 1-3M-parameter model trained for minutes on a CPU can only pick up an algorithm it sees spelled out
the same way every time, so every generator below writes one fixed sentence shape per elementary
operation (one column, one division, one move across the equals sign) and states every intermediate
result. `difficulty` only scales sizes; the sentence shapes stay the same so skills transfer upward.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from phiforge.data.domains.algebra import linear_systems, quadratics, sequences
from phiforge.data.domains.code import python_code
from phiforge.data.domains.measure import geometry, physics, unit_conversion
from phiforge.data.domains.numeric import combinatorics, decimals_percentages, probability
from phiforge.data.domains.school_algebra import chained, expressions, linear_equation, linear_system, polynomials
from phiforge.data.domains.school_numbers import (comparison, divisibility, multiply_divide, number_bases, place_value,
                                                  signed_arithmetic)
from phiforge.errors import PhiforgeError


@dataclass(frozen=True)
class Problem:
    id: str
    domain: str
    difficulty: int
    question: str
    steps: list[str]  # worked solution without the final "The answer is \boxed{...}." line
    answer: str  # for code problems: the function's name; the code itself is the last step
    topic: str
    tests: str = ""  # `assert` lines a code solution must pass (run via phiforge.sandbox); empty for math problems


_COLUMNS = ("Ones", "Tens", "Hundreds", "Thousands", "Ten thousands", "Hundred thousands",
            "Millions", "Ten millions", "Hundred millions", "Billions")


def _column(i: int) -> str:
    return _COLUMNS[i] if i < len(_COLUMNS) else f"Column {i + 1}"


def _digits(rng: random.Random, n: int) -> int:
    """A number with exactly n digits, so difficulty maps to a predictable amount of column work."""
    return rng.randint(10 ** (n - 1), 10 ** n - 1) if n > 1 else rng.randint(2, 9)


def _check(ok: bool, what: str) -> None:
    # Not a bare assert: a wrong answer in training data must never slip through under `python -O`.
    if not ok:
        raise AssertionError(f"teacher self-check failed: {what}")


def _digit(n: int, i: int) -> int:
    return n // 10 ** i % 10


# --- arithmetic -------------------------------------------------------------------------------

def _add_columns(a: int, b: int) -> list[str]:
    steps, carry = [], 0
    for i in range(max(len(str(a)), len(str(b)))):
        x, y = _digit(a, i), _digit(b, i)
        total = x + y + carry
        expr = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry = total // 10
        tail = f"write {total % 10} carry {carry}" if carry else f"write {total}"
        steps.append(f"{_column(i)}: {expr} = {total}, {tail}.")
    if carry:
        steps.append(f"{_column(len(str(max(a, b))))}: carry {carry}, write {carry}.")
    return steps


def _sub_columns(a: int, b: int) -> list[str]:
    """Columns of a - b for a >= b, with the borrow written into the expression itself."""
    steps, borrow = [], 0
    for i in range(len(str(a))):
        x, y = _digit(a, i), _digit(b, i)
        need = x - borrow < y
        expr = (f"10 + {x}" if need else f"{x}") + (" - 1" if borrow else "") + f" - {y}"
        value = x - borrow - y + (10 if need else 0)
        steps.append(f"{_column(i)}: {expr} = {value}" + (", borrow 1." if need else "."))
        borrow = 1 if need else 0
    _check(borrow == 0, "subtraction ended with a borrow")
    return steps


def _mul_columns(a: int, b: int) -> list[str]:
    """a times a one-digit b, column by column, so each step is a single times-table fact plus a carry."""
    steps, carry = [], 0
    for i in range(len(str(a))):
        x = _digit(a, i)
        total = x * b + carry
        expr = f"{x} * {b}" + (f" + {carry}" if carry else "")
        carry = total // 10
        tail = f"write {total % 10} carry {carry}" if carry else f"write {total}"
        steps.append(f"{_column(i)}: {expr} = {total}, {tail}.")
    if carry:
        steps.append(f"{_column(len(str(a)))}: carry {carry}, write {carry}.")
    return steps


def _arithmetic(rng: random.Random, d: int) -> tuple[str, list[str], int, str]:
    op = rng.choice("+-*")
    if op == "+":
        a, b = _digits(rng, d + 1), _digits(rng, rng.randint(max(2, d), d + 1))
        steps = _add_columns(a, b)
        result = a + b
        topic = ("To add whole numbers, add the digits column by column starting from the ones, "
                 "carrying 1 to the next column when a column sum is 10 or more.")
    elif op == "-":
        a, b = _digits(rng, d + 1), _digits(rng, rng.randint(max(2, d), d + 1))
        if d == 1 and a < b:
            a, b = b, a  # negative results only once the plain borrow algorithm is learnable
        result = a - b
        big, small = max(a, b), min(a, b)
        steps = [] if a >= b else [f"{a} is less than {b}, so find {b} - {a} and make it negative."]
        steps += _sub_columns(big, small)
        topic = ("To subtract whole numbers, subtract column by column starting from the ones, "
                 "borrowing 10 from the next column when the top digit is too small.")
    else:
        a, b = _digits(rng, d + 1), _digits(rng, 1 + (d - 1) // 2)
        result = a * b
        if b < 10:
            steps = _mul_columns(a, b)
            topic = ("To multiply by a one-digit number, multiply each digit starting from the ones "
                     "and carry the tens of each product to the next column.")
        else:
            parts = [_digit(b, i) * 10 ** i for i in range(len(str(b))) if _digit(b, i)]
            steps = [f"Split {b} into {' + '.join(str(p) for p in reversed(parts))}."]
            steps += [f"{a} * {p} = {a * p}." for p in parts]
            if len(parts) > 1:
                steps.append(f"Add: {' + '.join(str(a * p) for p in parts)} = {result}.")
            topic = ("To multiply by a number with several digits, split it into place values, "
                     "multiply by each part and add the partial products.")
    steps.append(f"So {a} {op} {b} = {result}.")
    _check(result == {"+": a + b, "-": a - b, "*": a * b}[op], "arithmetic result")
    return f"What is {a} {op} {b}?", steps, result, topic


# --- fractions --------------------------------------------------------------------------------

def _frac(num: int, den: int) -> str:
    return f"{num}/{den}"


def _fractions(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    top = 9 if d == 1 else 6 * d + 3
    p, q = rng.randint(2, top), rng.randint(2, top)
    # Proper fractions at difficulty 1; improper ones later so the model meets results above 1.
    hi = (lambda den: den - 1) if d == 1 else (lambda den: den * d - 1)
    n1, n2 = rng.randint(1, hi(p)), rng.randint(1, hi(q))
    op = rng.choice("+-")
    lcm = p * q // math.gcd(p, q)
    m1, m2 = n1 * (lcm // p), n2 * (lcm // q)
    num = m1 + m2 if op == "+" else m1 - m2
    g = math.gcd(num, lcm)  # gcd(0, lcm) == lcm, which turns 0/lcm into 0/1
    rn, rd = num // g, lcm // g
    answer = str(rn) if rd == 1 else _frac(rn, rd)
    steps = [
        f"The common denominator is lcm({p}, {q}) = {lcm}.",
        f"{_frac(n1, p)} = {_frac(m1, lcm)} and {_frac(n2, q)} = {_frac(m2, lcm)}.",
        f"{_frac(m1, lcm)} {op} {_frac(m2, lcm)} = {_frac(num, lcm)}.",
    ]
    if g == 1:
        steps.append(f"gcd({abs(num)}, {lcm}) = 1, so {answer} is in lowest terms.")
    else:
        steps.append(f"gcd({abs(num)}, {lcm}) = {g}, so {_frac(num, lcm)} = {answer}.")
    exact = Fraction(n1, p) + Fraction(n2, q) if op == "+" else Fraction(n1, p) - Fraction(n2, q)
    _check(answer == (str(exact.numerator) if exact.denominator == 1 else str(exact)), "fraction")
    topic = (f"To {'add' if op == '+' else 'subtract'} fractions, rewrite them over a common "
             f"denominator, {'add' if op == '+' else 'subtract'} the numerators, then divide top "
             "and bottom by their gcd.")
    return f"What is {_frac(n1, p)} {op} {_frac(n2, q)}?", steps, answer, topic


# --- linear equations -------------------------------------------------------------------------

def _side(a: int, b: int) -> str:
    return f"{a}*x " + (f"+ {b}" if b >= 0 else f"- {-b}")


def _nonzero(rng: random.Random, lo: int, hi: int) -> int:
    return rng.choice([-1, 1]) * rng.randint(lo, hi)


def _move_constant(a: int, b: int, c: int) -> list[str]:
    """Steps from a*x + b = c to x, the part every equation form ends with."""
    rhs = c - b
    if b > 0:
        first = f"Subtract {b} from both sides: {a}*x = {c} - {b} = {rhs}."
    else:
        first = f"Add {-b} to both sides: {a}*x = {c} + {-b} = {rhs}."
    div = f"{a}" if a > 0 else f"({a})"
    return [first, f"Divide both sides by {a}: x = {rhs} / {div} = {rhs // a}."]


def _linear(rng: random.Random, d: int) -> tuple[str, list[str], int, str]:
    x = rng.randint(-20 * d, 20 * d)
    a, b = _nonzero(rng, 2, 9 * d), _nonzero(rng, 1, 20 * d)
    if d >= 3 and rng.random() < 0.5:
        # x on both sides: gather x terms first, leaving the one-sided form solved below.
        c = _nonzero(rng, 1, 9 * d)
        while abs(a - c) < 2:
            c = _nonzero(rng, 1, 9 * d)
        e = a * x + b - c * x
        question = f"Solve for x: {_side(a, b)} = {_side(c, e)}."
        verb = f"Subtract {c}*x from" if c > 0 else f"Add {-c}*x to"
        steps = [f"{verb} both sides: {_side(a - c, b)} = {e}."] + _move_constant(a - c, b, e)
        _check(a * x + b == c * x + e and (e - b) == (a - c) * x, "two-sided equation")
        topic = ("To solve an equation with x on both sides, first gather the x terms on one side, "
                 "then remove the constant and divide by the coefficient of x.")
    else:
        c = a * x + b
        question = f"Solve for x: {_side(a, b)} = {c}."
        steps = _move_constant(a, b, c)
        _check(Fraction(c - b, a) == x, "linear solution")
        topic = ("To solve a*x + b = c, undo the operations on x in reverse order: first remove b "
                 "from both sides, then divide both sides by a.")
    return question, steps, x, topic


# --- number theory ----------------------------------------------------------------------------

def _euclid(a: int, b: int) -> tuple[list[str], int]:
    big, small = max(a, b), min(a, b)
    steps = []
    while small:
        steps.append(f"{big} = {big // small} * {small} + {big % small}.")
        big, small = small, big % small
    return steps, big


def _gcd_pair(rng: random.Random, hi: int, max_steps: int) -> tuple[int, int, list[str], int]:
    # A planted common factor makes nontrivial gcds common; the step cap keeps solutions short.
    while True:
        g = rng.randint(1, 12)
        a, b = g * rng.randint(1, hi // g), g * rng.randint(1, hi // g)
        if a == b or min(a, b) < 2:
            continue
        steps, result = _euclid(a, b)
        if len(steps) <= max_steps:
            return a, b, steps, result


def _number_theory(rng: random.Random, d: int) -> tuple[str, list[str], int, str]:
    kind = rng.choice(("gcd", "mod", "lcm"))
    if kind == "gcd":
        a, b, steps, g = _gcd_pair(rng, 10 ** (d + 1) - 1, 3 + 2 * d)
        steps.append(f"The last nonzero remainder is {g}, so gcd({a}, {b}) = {g}.")
        _check(g == math.gcd(a, b), "gcd")
        topic = ("The Euclidean algorithm divides the larger number by the smaller and repeats with "
                 "the smaller number and the remainder; the last nonzero remainder is the gcd.")
        return f"What is the greatest common divisor of {a} and {b}?", steps, g, topic
    if kind == "lcm":
        a, b, steps, g = _gcd_pair(rng, 30 * d, 2 + 2 * d)
        result = a * b // g
        steps.append(f"So gcd({a}, {b}) = {g}.")
        steps.append(f"lcm = {a} * {b} / {g} = {a * b} / {g} = {result}.")
        _check(result == math.lcm(a, b), "lcm")
        topic = ("The least common multiple of two numbers equals their product divided by their "
                 "greatest common divisor, which the Euclidean algorithm finds.")
        return f"What is the least common multiple of {a} and {b}?", steps, result, topic
    a, m = rng.randint(1, 10 ** (d + 2) - 1), rng.randint(2, 12 * d)
    q, r = divmod(a, m)
    steps = [f"{m} * {q} = {m * q} and {m} * {q + 1} = {m * (q + 1)} is more than {a}.",
             f"So the remainder is {a} - {m * q} = {r}."]
    _check(r == a % m and 0 <= r < m and m * q <= a < m * (q + 1), "remainder")
    topic = ("The remainder of a divided by m is what is left after taking away the largest "
             "multiple of m that is not more than a.")
    return f"What is the remainder when {a} is divided by {m}?", steps, r, topic


# A generator returns (question, steps, answer, topic), plus the unit tests for code domains.
_GENERATORS: dict[str, Callable[[random.Random, int], tuple]] = {
    "arithmetic": _arithmetic,
    "fractions": _fractions,
    "linear_equations": _linear,
    "number_theory": _number_theory,
    "quadratics_polynomials": quadratics,
    "linear_systems": linear_systems,
    "decimals_percentages": decimals_percentages,
    "combinatorics": combinatorics,
    "probability": probability,
    "sequences_series": sequences,
    "geometry": geometry,
    "unit_conversion": unit_conversion,
    "physics": physics,
    "python_code": python_code,
    # The school-maths curriculum (item 2 of the transfer issue): many phrasings, numbers of every length.
    "place_value": place_value,
    "comparison": comparison,
    "signed_arithmetic": signed_arithmetic,
    "multiply_divide": multiply_divide,
    "divisibility": divisibility,
    "number_bases": number_bases,
    "linear_one_unknown": linear_equation,
    "linear_two_unknowns": linear_system,
    "polynomials": polynomials,
    "expressions": expressions,
    "chained_steps": chained,
}

DOMAINS: tuple[str, ...] = tuple(_GENERATORS)


def _rng(domain: str, seed: int, index: int, difficulty: int) -> random.Random:
    # Hashing the full key gives independent streams per problem, stable across runs and machines,
    # so datasets are reproducible and held-out seeds never share problems by construction.
    digest = hashlib.sha256(f"phiforge|{domain}|{seed}|{index}|{difficulty}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_problem(domain: str, seed: int, index: int, difficulty: int = 1) -> Problem:
    """Generate problem `index` of `domain` for `seed`; identical arguments give an identical Problem."""
    if domain not in _GENERATORS:
        raise PhiforgeError(f"unknown problem domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty < 1:
        raise PhiforgeError(f"difficulty must be an integer >= 1, got {difficulty!r}")
    question, steps, answer, topic, *tests = _GENERATORS[domain](_rng(domain, seed, index, difficulty), difficulty)
    return Problem(
        id=f"{domain}-{seed}-{index}-d{difficulty}",
        domain=domain,
        difficulty=difficulty,
        question=question,
        steps=list(steps),
        answer=str(answer),
        topic=topic,
        tests=tests[0] if tests else "",
    )
