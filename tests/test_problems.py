import hashlib
import json
import math
import re
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

import pytest
import sympy

from phiforge import sandbox
from phiforge.answers import answers_equal, extract_answer
from phiforge.data.render import verify
from phiforge.data.domains.code import extract_code, verify_code
from phiforge.errors import PhiforgeError
from phiforge.data.problems import DOMAINS, Problem, make_problem
from phiforge.data.render import STYLES, chat, exercise, exercise_prompt, solution_text, textbook

SIZES = [(1, 300), (3, 100)]
ORIGINAL = ("arithmetic", "fractions", "linear_equations", "number_theory")
NEW = ("quadratics_polynomials", "linear_systems", "decimals_percentages", "combinatorics", "probability",
       "sequences_series", "geometry", "unit_conversion", "physics", "python_code")
CURRICULUM = ("place_value", "comparison", "signed_arithmetic", "multiply_divide", "divisibility", "number_bases",
              "linear_one_unknown", "linear_two_unknowns", "polynomials", "expressions", "chained_steps")
MATH = tuple(d for d in DOMAINS if d != "python_code")


def _all(difficulty, count, seed=7):
    """The original four domains, whose question formats the checks below parse."""
    for domain in ORIGINAL:
        for index in range(count):
            yield make_problem(domain, seed, index, difficulty)


@lru_cache(maxsize=None)
def _batch(domain, difficulty, count, seed=7):
    return tuple(make_problem(domain, seed, i, difficulty) for i in range(count))


def test_domains_listed():
    assert DOMAINS[:4] == ORIGINAL  # the published mixes name these; new domains only ever append
    assert set(DOMAINS) == set(ORIGINAL) | set(NEW) | set(CURRICULUM)


# --- golden pins: the original domains and renderings must not change by a single byte -----------
# Computed from the code before any new domain or rendering existed; a diff here changes published data.

_GOLDEN = [
    (("arithmetic", 0, 3, 1),
     "To subtract whole numbers, subtract column by column starting from the ones, borrowing 10 from the next "
     "column when the top digit is too small.\nExample: What is 58 - 30?\nSolution: Ones: 8 - 0 = 8. Tens: 5 - 3 = 2. "
     "So 58 - 30 = 28. The answer is \\boxed{28}.",
     "Exercise: What is 58 - 30?\nSolution: Ones: 8 - 0 = 8. Tens: 5 - 3 = 2. So 58 - 30 = 28. The answer is "
     "\\boxed{28}."),
    (("fractions", 7, 5, 2),
     "To subtract fractions, rewrite them over a common denominator, subtract the numerators, then divide top and "
     "bottom by their gcd.\nExample: What is 7/6 - 18/10?\nSolution: The common denominator is lcm(6, 10) = 30. "
     "7/6 = 35/30 and 18/10 = 54/30. 35/30 - 54/30 = -19/30. gcd(19, 30) = 1, so -19/30 is in lowest terms. "
     "The answer is \\boxed{-19/30}.",
     "Exercise: What is 7/6 - 18/10?\nSolution: The common denominator is lcm(6, 10) = 30. 7/6 = 35/30 and "
     "18/10 = 54/30. 35/30 - 54/30 = -19/30. gcd(19, 30) = 1, so -19/30 is in lowest terms. The answer is "
     "\\boxed{-19/30}."),
    (("linear_equations", 1, 9, 3),
     "To solve a*x + b = c, undo the operations on x in reverse order: first remove b from both sides, then divide "
     "both sides by a.\nExample: Solve for x: 16*x - 24 = -776.\nSolution: Add 24 to both sides: 16*x = -776 + 24 "
     "= -752. Divide both sides by 16: x = -752 / 16 = -47. The answer is \\boxed{-47}.",
     "Exercise: Solve for x: 16*x - 24 = -776.\nSolution: Add 24 to both sides: 16*x = -776 + 24 = -752. Divide "
     "both sides by 16: x = -752 / 16 = -47. The answer is \\boxed{-47}."),
    (("number_theory", 2, 4, 1),
     "The remainder of a divided by m is what is left after taking away the largest multiple of m that is not more "
     "than a.\nExample: What is the remainder when 17 is divided by 4?\nSolution: 4 * 4 = 16 and 4 * 5 = 20 is more "
     "than 17. So the remainder is 17 - 16 = 1. The answer is \\boxed{1}.",
     "Exercise: What is the remainder when 17 is divided by 4?\nSolution: 4 * 4 = 16 and 4 * 5 = 20 is more than 17. "
     "So the remainder is 17 - 16 = 1. The answer is \\boxed{1}."),
]
# sha256 over every field and rendering of 4 domains x seeds (0, 7) x difficulties 1-4 x indices 0-39.
_GOLDEN_DIGEST = "19426ce216cfbaea10ae3e1ea93dc1fd9b7ef6a7e5b25f2ba591c7f1d122fd87"


@pytest.mark.parametrize("key,book,ex", _GOLDEN, ids=[g[0][0] for g in _GOLDEN])
def test_golden_renderings(key, book, ex):
    p = make_problem(*key)
    assert textbook(p) == book
    assert exercise(p) == ex
    assert exercise_prompt(p) + " " + solution_text(p) == ex
    assert chat(p) == [{"role": "user", "content": p.question}, {"role": "assistant", "content": solution_text(p)}]
    assert p.tests == ""


def test_golden_digest():
    h = hashlib.sha256()
    for domain in ORIGINAL:
        for seed in (0, 7):
            for d in (1, 2, 3, 4):
                for i in range(40):
                    p = make_problem(domain, seed, i, d)
                    rec = [p.id, p.domain, p.difficulty, p.question, p.steps, p.answer, p.topic,
                           textbook(p), exercise(p), chat(p), exercise_prompt(p), solution_text(p)]
                    h.update(json.dumps(rec).encode() + b"\n")
    assert h.hexdigest() == _GOLDEN_DIGEST


@pytest.mark.parametrize("domain", DOMAINS)
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


# --- every domain: verified, deterministic, corruption-proof -------------------------------------

def _corrupt(answer):
    """A wrong answer of the same kind: one more, as a number, a percent or an expression."""
    if answer.endswith("%"):
        return f"{Fraction(answer[:-1]) + 1}%"
    try:
        return str(Fraction(answer) + 1)
    except ValueError:
        return f"{answer} + 1"


def _passes_in_process(code, tests):
    # Only the teacher's own code is exec'd outside the sandbox; that is what this checks.
    space = {}
    try:
        exec(compile(code, "<solution>", "exec"), space)
        exec(compile(tests, "<tests>", "exec"), space)
    except AssertionError:
        return False
    return True


def _broken(code):
    """A plausible wrong solution: the same function returning None."""
    head = code.splitlines()[0]
    return f"{head}\n    return None\n"


@pytest.mark.parametrize("difficulty,count", [(1, 200), (3, 50)])
@pytest.mark.parametrize("domain", DOMAINS)
def test_every_domain_verifies(domain, difficulty, count):
    for i, p in enumerate(_batch(domain, difficulty, count)):
        if i % 10 == 0:
            assert make_problem(domain, 7, i, difficulty) == p  # a pure function of the key
        assert p.domain == domain and p.difficulty == difficulty and p.steps, p
        assert p.question.isascii() and solution_text(p).isascii(), p
        if domain == "python_code":
            assert p.tests and p.answer == p.question.split("`")[1].split("(")[0]
            code = extract_code(solution_text(p))
            assert code is not None and _passes_in_process(code, p.tests), p
            assert not _passes_in_process(_broken(code), p.tests), p
            assert "\\boxed" not in solution_text(p)
            continue
        assert p.tests == ""
        assert verify(p), p
        assert solution_text(p).endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert extract_answer(exercise(p)) == p.answer, p
        assert not answers_equal(_corrupt(p.answer), p.answer), p
        wrong = solution_text(p).replace(f"\\boxed{{{p.answer}}}", f"\\boxed{{{_corrupt(p.answer)}}}")
        assert not answers_equal(extract_answer(wrong), p.answer), p


def test_seeds_and_indices_give_different_problems():
    for domain in NEW:
        assert len({p.question for p in _batch(domain, 1, 200)}) > 100, domain
        assert make_problem(domain, 1, 0).question != make_problem(domain, 2, 0).question or domain == "geometry"


@pytest.mark.parametrize("domain", NEW)
def test_new_domains_difficulty_knob(domain):
    """Difficulty scales the numbers involved (question and answer) and keeps level-1 solutions short."""
    def size(p):
        return max([int(n) for n in re.findall(r"\d+", f"{p.question} {p.answer}")] or [0])
    easy, hard = _batch(domain, 1, 200), _batch(domain, 3, 50)
    assert sum(map(size, hard)) / len(hard) > sum(map(size, easy)) / len(easy)
    assert max(len(solution_text(p).split()) for p in easy) < 100


def _sandbox_ready():
    return all(sandbox.capabilities().values())


@pytest.mark.skipif(not _sandbox_ready(), reason="sandbox protections unavailable on this machine")
def test_python_code_solutions_pass_in_sandbox():
    problems = _batch("python_code", 1, 10) + _batch("python_code", 3, 10)
    for p in problems:
        assert verify_code(p, solution_text(p)), p
    for p in problems[:3]:
        broken = solution_text(p).replace(extract_code(solution_text(p)), _broken(extract_code(solution_text(p))))
        assert not verify_code(p, broken), p
        assert sandbox.run_tests(_broken(extract_code(solution_text(p))), p.tests).status == "error"
    assert not verify_code(problems[0], "no code here")


def test_python_code_levels_add_templates():
    names = {d: {p.answer for p in _batch("python_code", d, 200 if d == 1 else 50)} for d in (1, 3)}
    assert len(names[1]) >= 6 and names[1] < names[3]


# --- independent recomputation of new-domain answers from the question text alone ---------------

_X = sympy.Symbol("x")


def _expr(text):
    return sympy.sympify(text.replace("^", "**"), locals={"x": _X})


def _recompute_new(p):
    q = p.question
    if m := re.fullmatch(r"Factor (.+)\.", q):
        return sympy.factor(_expr(m[1]))
    if m := re.fullmatch(r"Solve (.+) = (-?\d+)\. What is the (larger|smaller) solution\?", q):
        roots = sorted(sympy.solve(_expr(m[1]) - int(m[2]), _X))
        return roots[-1] if m[3] == "larger" else roots[0]
    if m := re.fullmatch(r"Expand (.+)\.", q):
        return sympy.expand(_expr(m[1]))
    if m := re.fullmatch(r"Evaluate p\(x\) = (.+) at x = (-?\d+)\.", q):
        return _expr(m[1]).subs(_X, int(m[2]))
    if m := re.fullmatch(r"Solve the system (.+) = (-?\d+) and (.+) = (-?\d+)\. What is ([xy])\?", q):
        X, Y = sympy.symbols("x y")
        names = {"x": X, "y": Y}
        eqs = [sympy.sympify(m[1], locals=names) - int(m[2]), sympy.sympify(m[3], locals=names) - int(m[4])]
        return sympy.solve(eqs, [X, Y])[names[m[5]]]
    if m := re.fullmatch(r"What is (\d+\.?\d*) ([-+*]) (\d+\.?\d*)\?", q):
        a, b = Decimal(m[1]), Decimal(m[3])
        return {"+": a + b, "-": a - b, "*": a * b}[m[2]]
    if m := re.fullmatch(r"What is (\d+)% of (\d+)\?", q):
        return Decimal(m[1]) * Decimal(m[2]) / 100
    if m := re.fullmatch(r"A price (?:rises|falls) from (\d+) to (\d+)\. What is the percent \w+\?", q):
        return f"{abs(Fraction(int(m[2]) - int(m[1]), int(m[1]))) * 100}%"
    if m := re.fullmatch(r"What is the (\d+)\w\w term of the (arithmetic|geometric) sequence (.+), \.\.\.\?", q):
        n, (a, b, *_) = int(m[1]), map(int, m[3].split(", "))
        return a + (n - 1) * (b - a) if m[2] == "arithmetic" else a * (b // a) ** (n - 1)
    if m := re.fullmatch(r"What is the sum of the first (\d+) terms of the (arithmetic|geometric) sequence (.+), "
                         r"\.\.\.\?", q):
        n, (a, b, *_) = int(m[1]), map(int, m[3].split(", "))
        return sum(a + i * (b - a) if m[2] == "arithmetic" else a * (b // a) ** i for i in range(n))
    if m := re.fullmatch(r"(?:In how many ways can a team of|In how many ways can|How many committees of) (\d+) "
                         r"(?:people |toppings )?(?:be chosen|can be formed) from (\d+) [a-z ]+\?", q):
        return math.comb(int(m[2]), int(m[1]))
    if m := re.fullmatch(r"In how many ways can (\d+) runners take the first (\d+) places in a race\?", q):
        return math.perm(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"A fair coin is flipped (\d+) times\. What is the probability of getting exactly (\d+) "
                         r"heads\?", q):
        return Fraction(math.comb(int(m[1]), int(m[2])), 2 ** int(m[1]))
    if m := re.fullmatch(r"Two fair six-sided dice are rolled\. What is the probability that the sum is (\d+)\?", q):
        return Fraction(6 - abs(7 - int(m[1])), 36)
    if m := re.fullmatch(r"A right triangle has legs of (\d+) \w+ and (\d+) \w+\. .*", q):
        return sympy.sqrt(int(m[1]) ** 2 + int(m[2]) ** 2)
    if m := re.fullmatch(r"A current of (\S+) A flows through a (\d+) ohm resistor\. .*", q):
        return Decimal(m[1]) * int(m[2])
    return None


@pytest.mark.parametrize("difficulty", [1, 3])
def test_new_answers_recomputed_from_question(difficulty):
    checked = 0
    for domain in NEW:
        for p in _batch(domain, difficulty, 200 if difficulty == 1 else 50)[:100]:
            value = _recompute_new(p)
            if value is None:
                continue
            checked += 1
            if isinstance(value, sympy.Expr) and value.free_symbols:
                assert sympy.expand(value - _expr(p.answer)) == 0, p
                if p.question.startswith("Factor"):
                    assert _expr(p.answer) == sympy.factor(_expr(p.answer)) or "*(" in p.answer, p
            else:
                assert answers_equal(str(value), p.answer), (value, p)
    assert checked > (300 if difficulty == 1 else 150)
