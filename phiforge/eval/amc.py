"""A fresh AMC-style contest: five-option multiple choice drawn after training from a seed training never used.

Phi-4 checked its maths on the November 2024 AMC-10/12, released after all its training data. The analogue here is
a contest generated from the same problem generators as training (problems.py) but from its own seed
(`eval.amc_seed`, which config validation keeps apart from `synth.seed` and the open contest's `eval.seed`), with
every question that training saw dropped. Only problems with a numeric answer (integer, fraction, decimal or
percentage) become questions, since options must be comparable values.

The four wrong options are answers a student would reach by a typical slip, each named in the record so the report
can show which slips a model falls for: the wrong operation, a sign error, off by one, a lost carry or borrow (off
by ten or a hundred), reversed digits, a misplaced decimal point, an inverted fraction, an off-by-one numerator or
denominator. Options are shuffled by the contest seed, so the right letter is uniform over A-E.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from phiforge.answers import answers_equal
from phiforge.config import Recipe
from phiforge.data.synth import sample_problem
from phiforge.errors import PhiforgeError
from phiforge.eval.choice import LETTERS
from phiforge.eval.items import Item

N_OPTIONS = len(LETTERS)


@dataclass(frozen=True)
class Value:
    """A numeric answer and how it is written, so that distractors are written the same way."""

    number: Fraction
    form: str  # "int" | "fraction" | "decimal" | "percent"
    places: int = 0  # decimal places, for decimals and percentages

    def text(self, number: Fraction | None = None) -> str:
        x = self.number if number is None else number
        if self.form == "fraction" or (self.form == "int" and x.denominator != 1):
            return str(x)  # Fraction prints lowest terms, and "n" when whole
        if self.form == "int":
            return str(x.numerator)
        s = f"{float(x):.{self.places}f}"
        return s + "%" if self.form == "percent" else s


_INT, _FRAC = re.compile(r"^-?\d+$"), re.compile(r"^-?\d+/\d+$")
_DEC = re.compile(r"^(-?\d+)\.(\d+)$")


def parse_value(answer: str) -> Value | None:
    """The answer as a number, or None when it is not a plain number (a polynomial, a multiple of pi, code)."""
    a = answer.strip()
    percent = a.endswith("%")
    core = a[:-1].strip() if percent else a
    if _INT.match(core):
        return Value(Fraction(int(core)), "percent" if percent else "int")
    if _FRAC.match(core) and not percent:
        return Value(Fraction(core), "fraction")
    m = _DEC.match(core)
    if m:
        return Value(Fraction(Decimal(core)), "percent" if percent else "decimal", len(m.group(2)))
    return None


_OPERATION = re.compile(r"What is (-?\d+) ([-+*]) (-?\d+)\?")
_FRACTIONS = re.compile(r"What is (-?\d+)/(\d+) ([-+]) (-?\d+)/(\d+)\?")
_LINEAR = re.compile(r"Solve for x: (-?\d+)\*x ([-+]) (\d+) = (-?\d+)\.")
_LCM = re.compile(r"least common multiple of (\d+) and (\d+)")
_REMAINDER = re.compile(r"remainder when (\d+) is divided by (\d+)")
_NONNEGATIVE = re.compile(r"greatest common divisor|least common multiple|remainder")


def telling_slips(question: str) -> list[tuple[Fraction, str]]:
    """Wrong answers that a specific misstep in this kind of question gives; these always become options."""
    out: list[tuple[Fraction, str]] = []
    if m := _OPERATION.search(question):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        results = {"+": a + b, "-": a - b, "*": a * b}
        out += [(Fraction(r), f"used {o} instead of {op}") for o, r in results.items() if o != op]
    elif m := _FRACTIONS.search(question):
        n1, d1, op, n2, d2 = int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))
        if op == "+":
            out.append((Fraction(n1 + n2, d1 + d2), "added numerators and denominators"))
        elif d1 != d2:
            out.append((Fraction(n1 - n2, abs(d1 - d2)), "subtracted numerators and denominators"))
        flipped = Fraction(n1, d1) - Fraction(n2, d2) if op == "+" else Fraction(n1, d1) + Fraction(n2, d2)
        out.append((flipped, f"used {'-' if op == '+' else '+'} instead of {op}"))
    elif m := _LINEAR.search(question):
        a, b, c = int(m.group(1)), int(m.group(3)) * (1 if m.group(2) == "+" else -1), int(m.group(4))
        out.append((Fraction(c + b, a), "moved the constant without changing its sign"))
        out.append((Fraction(c - b), "forgot to divide by the coefficient"))
    elif m := _LCM.search(question):
        out.append((Fraction(int(m.group(1)) * int(m.group(2))), "multiplied without dividing by the gcd"))
    elif m := _REMAINDER.search(question):
        out.append((Fraction(int(m.group(1)) // int(m.group(2))), "gave the quotient, not the remainder"))
    return out


def generic_slips(question: str, v: Value) -> list[tuple[Fraction, str]]:
    """Wrong answers from slips possible in any question with this kind of answer."""
    x = v.number
    out: list[tuple[Fraction, str]] = []
    if x != 0 and not _NONNEGATIVE.search(question):
        out.append((-x, "sign error"))
    if x.denominator == 1:
        n = x.numerator
        out += [(x + 1, "off by one (+1)"), (x - 1, "off by one (-1)")]
        if abs(n) >= 10:
            out += [(x + 10, "lost a borrow (+10)"), (x - 10, "lost a carry (-10)")]
        if abs(n) >= 100:
            out += [(x + 100, "lost a borrow (+100)"), (x - 100, "lost a carry (-100)")]
        digits = str(abs(n))
        if len(digits) >= 2 and digits[::-1] != digits and digits[-1] != "0":
            out.append((Fraction(int(digits[::-1]) * (1 if n >= 0 else -1)), "reversed digits"))
    else:
        p, q = x.numerator, x.denominator
        out += [(Fraction(q, p), "inverted the fraction"), (Fraction(p + 1, q), "numerator off by one"),
                (Fraction(p - 1, q), "numerator off by one"), (Fraction(p, q + 1), "denominator off by one")]
        if q > 2:
            out.append((Fraction(p, q - 1), "denominator off by one"))
    if v.form in ("decimal", "percent"):
        out += [(x * 10, "misplaced the decimal point (x10)"), (x / 10, "misplaced the decimal point (/10)")]
        step = Fraction(1, 10 ** v.places)
        out += [(x + step, "last digit off by one"), (x - step, "last digit off by one")]
    return out


def options_for(question: str, answer: str, rng: random.Random) -> tuple[list[str], int, list[str]] | None:
    """Five options (the answer and four slips, shuffled), the answer's index and each option's mistake ("" for
    the right one); None when the answer is not a number."""
    v = parse_value(answer)
    if v is None:
        return None
    head, tail = telling_slips(question), generic_slips(question, v)
    rng.shuffle(tail)
    chosen: list[tuple[str, str]] = []
    texts = [v.text()]
    for number, why in head + tail:
        t = v.text(number)
        if number == v.number or (number < 0 <= v.number and _NONNEGATIVE.search(question)) or any(t == o or answers_equal(t, o) or answers_equal(o, t) for o in texts):
            continue
        texts.append(t)
        chosen.append((t, why))
        if len(chosen) == N_OPTIONS - 1:
            break
    k = 3
    while len(chosen) < N_OPTIONS - 1:  # small answers can run out of distinct slips: widen the miss
        t = v.text(v.number + k)
        if t not in texts:
            texts.append(t)
            chosen.append((t, f"off by {k}"))
        k += 1
    rows = [(v.text(), "")] + chosen
    rng.shuffle(rows)
    right = next(i for i, (_, why) in enumerate(rows) if why == "")
    return [t for t, _ in rows], right, [why for _, why in rows]


def contest(recipe: Recipe, seen_questions: set[str]) -> tuple[list[Item], dict]:
    """`eval.amc_n_problems` distinct questions from `eval.amc_seed`, none seen in training, with their options;
    and counts of the draws dropped (seen in training, not numeric, repeated)."""
    cfg = recipe.eval
    items: list[Item] = []
    mistakes: dict[str, list[str]] = {}
    domains: dict[str, str] = {}
    dropped = {"seen_in_training": 0, "not_numeric": 0, "repeated": 0}
    here: set[str] = set()
    limit = 50 * cfg.amc_n_problems
    index = 0
    while len(items) < cfg.amc_n_problems:
        if index >= limit:
            raise PhiforgeError(f"only {len(items)} of eval.amc_n_problems={cfg.amc_n_problems} AMC questions are "
                                f"numeric and unseen by training after {limit} draws; lower eval.amc_n_problems")
        problem, _ = sample_problem(recipe.synth, index, seed=cfg.amc_seed)
        index += 1
        if problem.question in seen_questions:
            dropped["seen_in_training"] += 1
            continue
        if problem.question in here:
            dropped["repeated"] += 1
            continue
        rng = random.Random(hashlib.sha256(f"amc:{cfg.amc_seed}:{problem.id}".encode()).digest())
        made = options_for(problem.question, problem.answer, rng)
        if made is None:
            dropped["not_numeric"] += 1
            continue
        options, right, why = made
        here.add(problem.question)
        item_id = f"amc-{problem.id}"
        items.append(Item(item_id, problem.question, (LETTERS[right],), options=tuple(options)))
        mistakes[item_id] = why
        domains[item_id] = problem.domain
    return items, {"dropped": dropped, "mistakes": mistakes, "domains": domains}
