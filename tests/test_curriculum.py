"""The school-maths curriculum: its procedures compute what Python computes, row by row; its questions come in many
surface forms; its numbers cover every length it promises."""

import hashlib
import json
import random
import re
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest

from phiforge.data.domains import phrasing, procedures, school_algebra, school_numbers
from phiforge.data.problems import make_problem
from phiforge.data.render import chat

CURRICULUM = ("place_value", "comparison", "signed_arithmetic", "multiply_divide", "divisibility", "number_bases",
              "linear_one_unknown", "linear_two_unknowns", "polynomials", "expressions", "chained_steps")


def _books():
    for module in (phrasing, school_numbers, school_algebra):
        for name, value in vars(module).items():
            if isinstance(value, phrasing.Phrasebook):
                yield f"{module.__name__}.{name}", value


@pytest.mark.parametrize("name,book", list(_books()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_phrasebook_has_twenty_distinct_phrasings(name, book):
    assert len(set(book.templates)) == len(book.templates) >= 20, name


# --- procedures: golden rows, then agreement with Python on random operands ----------------------------------------

def test_rows_golden():
    assert procedures.add_rows(455253, 98) == ("3+8=11; 5+9+1=15; 2+1=3; 5; 5; 4", 455351)
    assert procedures.add_rows(95, 7) == ("5+7=12; 9+1=10; 1", 102)
    assert procedures.sub_rows(455253, 98) == ("13-8=5; 15-1-9=5; 2-1=1; 5; 5; 4", 455155)
    assert procedures.sub_rows(1000, 1) == ("10-1=9; 10-1=9; 10-1=9; 1-1=0", 999)
    assert procedures.times_digit_rows(455, 7) == ("5*7=35; 5*7+3=38; 4*7+3=31; 3", 3185)
    assert procedures.long_division_rows(462638, 45) == (
        "46/45=1 r1; 12/45=0 r12; 126/45=2 r36; 363/45=8 r3; 38/45=0 r38", 10280, 38)
    assert procedures.euclid_rows(84, 36) == ("84 mod 36 = 12; 36 mod 12 = 0", 12)


def test_procedures_agree_with_python():
    rng = random.Random(5)
    for _ in range(400):
        a, b = rng.randint(0, 10 ** rng.randint(1, 12)), rng.randint(0, 10 ** rng.randint(1, 12))
        assert procedures.add_rows(a, b)[1] == a + b
        hi, lo = max(a, b), min(a, b)
        assert procedures.sub_rows(hi, lo)[1] == hi - lo
        k = rng.randint(0, 9)
        assert procedures.times_digit_rows(a, k)[1] == a * k
        d = rng.randint(1, 999)
        assert procedures.long_division_rows(a, d)[1:] == (a // d, a % d)
        x, y = school_numbers.sized(rng), school_numbers.sized(rng)
        assert procedures.signed_sum_lines(x, y)[1] == x + y
        p, q = rng.randint(-10 ** 6, 10 ** 6), rng.choice([n for n in range(-400, 400) if n])
        assert procedures.quotient_lines(p, q)[1] == Fraction(p, q)


def test_products_agree_with_python():
    rng = random.Random(6)
    for _ in range(400):
        x, y = school_numbers.sized(rng, max_digits=8), school_numbers.sized(rng, max_digits=3)
        lines, value = procedures.product_lines(x, y)
        assert value == x * y and lines[-1] == f"Result: {school_numbers.show(x * y)}."


def test_rounding_is_half_away_from_zero():
    rng = random.Random(7)
    for _ in range(400):
        x, k = school_numbers.sized(rng, max_digits=9), rng.randint(-3, 5)
        quantum = Decimal(1).scaleb(k)
        want = (abs(Decimal(x.numerator) / Decimal(x.denominator)) / quantum).quantize(
            Decimal(1), rounding=ROUND_HALF_UP) * quantum
        assert abs(procedures.round_lines(x, k)[1]) == Fraction(want)


def test_a_wrong_row_is_refused():
    with pytest.raises(AssertionError, match="self-check"):
        procedures.sub_rows(3, 5)  # the procedure is for a >= b; a slip must never reach training data


# --- surface forms and coverage ------------------------------------------------------------------------------------

def _shape(question: str) -> str:
    """A question with its numbers and single-letter names masked: what is left is its phrasing."""
    masked = re.sub(r"-?\d+(?:\.\d+)?(?:/\d+)?", "#", question)
    return re.sub(r"\b[a-z]\b", "v", masked)


@pytest.mark.parametrize("domain", CURRICULUM)
def test_each_domain_asks_in_many_ways(domain):
    questions = [make_problem(domain, 0, i).question for i in range(1500)]
    assert len({_shape(q) for q in questions}) >= 20, domain
    assert all(q.isascii() for q in questions)


def test_number_lengths_are_balanced_up_to_twelve_digits():
    lengths = Counter()
    for i in range(3000):
        question = make_problem("signed_arithmetic", 0, i).question
        for number in re.findall(r"\d+(?:\.\d+)?", question):
            lengths[len(number.replace(".", ""))] += 1
    assert set(range(1, 13)) <= set(lengths)
    assert min(lengths[n] for n in range(1, 13)) > 0.3 * max(lengths[n] for n in range(1, 13))


def test_notation_and_letters_vary():
    questions = [make_problem("polynomials", 0, i).question for i in range(600)]
    assert any("**" in q for q in questions) and any("^" in q for q in questions)
    letters = {re.search(r"\b([a-z])\b", make_problem("linear_one_unknown", 0, i).question).group(1)
               for i in range(600)}
    assert len(letters) >= 15


def test_yes_no_answers_follow_the_question():
    for i in range(300):
        p = make_problem("divisibility", 0, i)
        if p.question.startswith("Is ") and "prime" in p.question and "composite" not in p.question \
                and "not prime" not in p.question:
            n = int(re.search(r"\d+", p.question).group())
            assert p.answer == ("yes" if all(n % k for k in range(2, int(n ** 0.5) + 1)) else "no"), p


def test_curriculum_output_is_pinned():
    """Published data must not drift: a change to any generator's output changes this digest on purpose only."""
    h = hashlib.sha256()
    for domain in CURRICULUM:
        for i in range(40):
            h.update(json.dumps(chat(make_problem(domain, 0, i))).encode())
    assert h.hexdigest()[:16] == _CURRICULUM_DIGEST


_CURRICULUM_DIGEST = "46a80f63b6999fc7"
