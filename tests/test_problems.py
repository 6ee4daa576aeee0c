import math
import re
from fractions import Fraction

import pytest

from phiforge.answers import answers_equal, extract_answer, verify
from phiforge.errors import PhiforgeError
from phiforge.problems import DOMAINS, Problem, make_problem
from phiforge.render import STYLES, chat, exercise, exercise_prompt, solution_text, textbook

SIZES = [(1, 300), (3, 100)]


def _all(difficulty, count, seed=7):
    for domain in DOMAINS:
        for index in range(count):
            yield make_problem(domain, seed, index, difficulty)


def test_domains_listed():
    assert {"arithmetic", "fractions", "linear_equations", "number_theory"} <= set(DOMAINS)


@pytest.mark.parametrize("domain", ["arithmetic", "fractions", "linear_equations", "number_theory"])
def test_deterministic(domain):
    assert make_problem(domain, 3, 11) == make_problem(domain, 3, 11)
    assert make_problem(domain, 3, 11, 2) == make_problem(domain, 3, 11, 2)
    questions = {make_problem(domain, 3, i).question for i in range(50)}
    assert len(questions) > 25
    assert make_problem(domain, 3, 11).id != make_problem(domain, 4, 11).id


def test_unknown_domain_names_it():
    with pytest.raises(PhiforgeError) as err:
        make_problem("astrology", 0, 0)
    assert "astrology" in str(err.value) and "arithmetic" in str(err.value)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_difficulty(bad):
    with pytest.raises(PhiforgeError):
        make_problem("arithmetic", 0, 0, bad)


@pytest.mark.parametrize("difficulty,count", SIZES)
def test_rendered_solution_verifies(difficulty, count):
    for p in _all(difficulty, count):
        assert isinstance(p, Problem) and p.difficulty == difficulty
        assert verify(p), p
        assert extract_answer(exercise(p)) == p.answer
        assert not answers_equal(_off_by_one(p.answer), p.answer), p


def _off_by_one(answer):
    return str(Fraction(answer) + 1)


def _recompute(p):
    """The answer from the question text alone, without looking at the worked steps."""
    q = p.question
    if m := re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", q):
        a, op, b = int(m[1]), m[2], int(m[3])
        return str({"+": a + b, "-": a - b, "*": a * b}[op])
    if m := re.fullmatch(r"What is (\d+)/(\d+) ([-+]) (\d+)/(\d+)\?", q):
        x, y = Fraction(int(m[1]), int(m[2])), Fraction(int(m[4]), int(m[5]))
        v = x + y if m[3] == "+" else x - y
        return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"
    if m := re.fullmatch(r"Solve for x: (-?\d+)\*x ([-+]) (\d+) = (?:(-?\d+)\*x ([-+]) (\d+)|(-?\d+))\.", q):
        a, b = int(m[1]), int(m[3]) * (1 if m[2] == "+" else -1)
        if m[7] is not None:
            c, e = 0, int(m[7])
        else:
            c, e = int(m[4]), int(m[6]) * (1 if m[5] == "+" else -1)
        x = Fraction(e - b, a - c)  # a*x + b = c*x + e
        assert x.denominator == 1
        return str(x.numerator)
    if m := re.fullmatch(r"What is the greatest common divisor of (\d+) and (\d+)\?", q):
        return str(math.gcd(int(m[1]), int(m[2])))
    if m := re.fullmatch(r"What is the least common multiple of (\d+) and (\d+)\?", q):
        return str(math.lcm(int(m[1]), int(m[2])))
    if m := re.fullmatch(r"What is the remainder when (\d+) is divided by (\d+)\?", q):
        return str(int(m[1]) % int(m[2]))
    raise AssertionError(f"unrecognised question: {q}")


@pytest.mark.parametrize("difficulty,count", SIZES)
def test_answer_recomputed_from_question(difficulty, count):
    for p in _all(difficulty, count, seed=1):
        assert _recompute(p) == p.answer, p


def test_difficulty_one_is_small_and_short():
    for p in _all(1, 300):
        assert len(solution_text(p).split()) < 60, p
        assert solution_text(p).isascii() and p.question.isascii()
        if p.domain == "arithmetic":
            a, b = map(int, re.findall(r"\d+", p.question))
            assert a < 100 and b < 100
        if p.domain == "fractions":
            assert all(2 <= int(d) <= 9 for d in re.findall(r"/(\d+)", p.question))


def test_difficulty_scales_sizes():
    def biggest(d):
        return max(int(n) for p in _all(d, 50) for n in re.findall(r"\d+", p.question))
    assert biggest(3) > biggest(1)


def test_renderings():
    p = make_problem("fractions", 0, 5)
    sol = solution_text(p)
    assert sol.endswith(f"The answer is \\boxed{{{p.answer}}}.")
    assert exercise_prompt(p) == f"Exercise: {p.question}\nSolution:"
    assert exercise(p) == exercise_prompt(p) + " " + sol
    assert textbook(p).startswith(p.topic) and f"Example: {p.question}" in textbook(p)
    assert textbook(p).endswith(sol)
    assert chat(p) == [{"role": "user", "content": p.question}, {"role": "assistant", "content": sol}]
    assert STYLES["textbook"] is textbook and STYLES["exercise"] is exercise
