"""School-maths curriculum, symbols: linear equations in one and two unknowns with any letter, polynomials
(evaluation, collecting terms, expansion, differentiation), multi-step expressions with brackets and fractions, and
problems that chain steps (define a quantity, then use it).

Each solution moves one operation per line (collect, substitute, compute, divide) and is checked with exact
rational arithmetic; notation varies per problem (the letter, the function's name, `^` or `**`).
"""

from __future__ import annotations

import random
from fractions import Fraction

from phiforge.data.domains.common import check, frac, linear, poly, term
from phiforge.data.domains.phrasing import VALUE_OF, Phrasebook, function_name, letter, power_sign, task

_SOLVE = Phrasebook((
    "Solve {eq} for {v}.", "Find {v} if {eq}.", "Solve for {v}: {eq}", "{eq}. What is {v}?",
    "Given {eq}, what is the value of {v}?", "What value of {v} makes {eq} true?", "Determine {v} from {eq}.",
    "If {eq}, find {v}.", "Work out {v} when {eq}.", "Find the value of {v} that satisfies {eq}.",
    "Suppose {eq}. Find {v}.", "{eq}; solve for {v}.", "What is {v} when {eq}?", "Calculate {v} given that {eq}.",
    "Which number {v} solves {eq}?", "For which {v} is {eq}?", "Find the solution {v} of {eq}.",
    "Work out the unknown {v} in {eq}.", "Knowing that {eq}, what must {v} be?", "Solve the equation {eq} for {v}.",
))
_SOLVE2 = Phrasebook((
    "Solve {e1} and {e2} for {v}.", "If {e1} and {e2}, what is {v}?", "Given {e1} and {e2}, find {v}.",
    "Find {v} when {e1} and {e2}.", "{e1}, {e2}. What is {v}?", "Suppose {e1} and {e2}. Determine {v}.",
    "The equations {e1} and {e2} hold. Find {v}.", "Solve the system {e1}, {e2} for {v}.",
    "What is {v} if {e1} and also {e2}?", "Work out {v} from {e1} and {e2}.", "{e1} and {e2}: find {v}.",
    "Both {e1} and {e2} are true. What is {v}?", "Find the value of {v} given {e1} and {e2}.",
    "Using {e1} and {e2}, calculate {v}.", "Take {e1} and {e2}. Solve for {v}.", "Let {e1} and {e2}. Find {v}.",
    "Given that {e1} and that {e2}, what is {v}?", "Determine {v} where {e1} and {e2}.",
    "Which {v} satisfies {e1} together with {e2}?", "Solve for {v}: {e1}, {e2}.",
))
_EVALUATE = Phrasebook((
    "If {f}({v}) = {p}, what is {f}({x})?", "Given {f}({v}) = {p}, compute {f}({x}).", "{f}({v}) = {p}. Find {f}({x}).",
    "Define {f}({v}) = {p}. Evaluate {f} at {v} = {x}.", "For {f}({v}) = {p}, find {f}({x}).",
    "Suppose {f}({v}) = {p}. What is {f}({x})?", "Take {f}({v}) = {p}. Work out {f}({x}).",
    "The function {f} is {f}({v}) = {p}. Calculate {f}({x}).", "What is {p} when {v} = {x}?",
    "Evaluate {p} at {v} = {x}.", "Find the value of {p} for {v} = {x}.", "Substitute {v} = {x} into {p}.",
    "Put {v} = {x} in {p}. What do you get?", "If {v} = {x}, what is {p}?", "With {v} = {x}, compute {p}.",
    "{f} is defined by {f}({v}) = {p}. Give {f}({x}).", "Compute {f}({x}) where {f}({v}) = {p}.",
    "Work out {p} for {v} = {x}.", "When {v} is {x}, what is the value of {p}?", "Find {f}({x}) if {f}({v}) = {p}.",
))
_DIFF = Phrasebook((
    "Differentiate {p} with respect to {v}.", "What is the derivative of {p}?", "Find d/d{v} of {p}.",
    "Find the derivative of {p} with respect to {v}.", "If {f}({v}) = {p}, what is {f}'({v})?",
    "Give the derivative of {f}({v}) = {p}.", "Compute d/d{v} ({p}).", "Take the derivative of {p}.",
    "What do you get when you differentiate {p}?", "{f}({v}) = {p}. Find {f}'({v}).", "Work out the derivative of {p}.",
    "Find {f}'({v}) for {f}({v}) = {p}.", "Differentiate {f}({v}) = {p}.", "What is d/d{v} of {p}?",
    "Calculate the derivative of {p} in {v}.", "Determine the derivative of {p}.", "What is the rate of change of {p} "
    "with respect to {v}?", "Find the slope function of {p}.", "Derive {p} with respect to {v}.",
    "Compute the derivative {f}'({v}) when {f}({v}) = {p}.",
))
_DIFF2 = Phrasebook((
    "What is the second derivative of {p}?", "Find the second derivative of {p} with respect to {v}.",
    "Differentiate {p} twice with respect to {v}.", "If {f}({v}) = {p}, what is {f}''({v})?",
    "Compute d^2/d{v}^2 of {p}.", "{f}({v}) = {p}. Find {f}''({v}).", "Take the derivative of {p} twice.",
    "Give the second derivative of {f}({v}) = {p}.", "Work out the second derivative of {p}.",
    "Find {f}''({v}) where {f}({v}) = {p}.", "Differentiate {f}({v}) = {p} two times.",
    "What do you get differentiating {p} twice?", "Determine the second derivative of {p} in {v}.",
    "Calculate {f}''({v}) for {f}({v}) = {p}.", "Find the derivative of the derivative of {p}.",
    "Second derivative of {p} with respect to {v}?", "Compute the second derivative of {p}.",
    "What is {f}''({v}) if {f}({v}) = {p}?", "Differentiate {p} and then differentiate the result.",
    "How does {p} look after differentiating twice?",
))
_COLLECT = Phrasebook((
    "Simplify {e}.", "Collect the terms of {e}.", "Combine like terms: {e}.", "Write {e} in its simplest form.",
    "Simplify the expression {e}.", "Tidy up {e} by collecting like terms.", "Collect like terms in {e}.",
    "What is {e} after collecting terms?", "Gather the terms of {e}.", "Reduce {e} to simplest form.",
    "Simplify: {e}", "Combine the like terms of {e}.", "Write {e} more simply.", "Make {e} as short as possible.",
    "Put {e} in simplest form.", "Group like terms in {e}.", "Rewrite {e} with like terms combined.",
    "Express {e} in simplest form.", "Simplify {e} by combining terms.", "Collect together the terms in {e}.",
))
_EXPAND = Phrasebook((
    "Expand {e}.", "Multiply out {e}.", "Expand and simplify {e}.", "Write {e} without brackets.",
    "Remove the brackets in {e} and simplify.", "Expand the product {e}.", "Multiply out and simplify {e}.",
    "What is {e} expanded?", "Expand {e} fully.", "Rewrite {e} as a polynomial.", "Open the brackets of {e}.",
    "Find the expanded form of {e}.", "Expand: {e}", "Multiply the brackets in {e}.", "Give {e} in expanded form.",
    "Express {e} as a sum of terms.", "Work out the expansion of {e}.", "Expand out {e}.",
    "Write {e} as a polynomial in standard form.", "Multiply {e} out.",
))
_CHAIN = Phrasebook((
    "Let {v} = {d}. What is {e}?", "Suppose {v} = {d}. Compute {e}.", "Set {v} = {d}. Then what is {e}?",
    "If {v} equals {d}, find {e}.", "{v} is {d}. Work out {e}.", "Take {v} = {d} and evaluate {e}.",
    "With {v} = {d}, what is {e}?", "Put {v} = {d}. Find the value of {e}.", "Given {v} = {d}, calculate {e}.",
    "First {v} = {d}; then evaluate {e}.", "Write {v} for {d}. What is {e}?", "Say {v} = {d}. What does {e} equal?",
    "Define {v} as {d}. Compute {e}.", "We have {v} = {d}. Give {e}.", "Assume {v} = {d}. What is the value of {e}?",
    "Call {d} by the name {v}. Work out {e}.", "If {v} is {d}, what is {e}?", "{v} = {d}. Evaluate {e}.",
    "Begin with {v} = {d}. Calculate {e}.", "Use {v} = {d} to find {e}.",
))
_CHAIN_SOLVE = Phrasebook((
    "Suppose {eq}. What is {e}?", "If {eq}, find {e}.", "Given {eq}, compute {e}.", "{eq}. Work out {e}.",
    "Knowing {eq}, what is {e}?", "Let {eq}. Calculate {e}.", "Assume {eq}. Evaluate {e}.",
    "When {eq}, what does {e} equal?", "Solve {eq}, then find {e}.", "From {eq}, work out {e}.",
    "It is known that {eq}. Find {e}.", "Say {eq}. Then what is {e}?", "Take {eq}. Compute {e}.",
    "With {eq}, give the value of {e}.", "If it holds that {eq}, what is {e}?", "{eq}; what is {e}?",
    "Find {e}, given that {eq}.", "Determine {e} if {eq}.", "Where {eq}, evaluate {e}.",
    "Use {eq} to work out {e}.",
))


def _coef(rng: random.Random, hi: int) -> int:
    return rng.choice((-1, 1)) * rng.randint(1, hi)


def _sum_line(values: list[int | Fraction]) -> str:
    """`3 - 5 + 12 = 10`: a short signed sum on one line."""
    text = frac(values[0]) + "".join(f" - {frac(-x)}" if x < 0 else f" + {frac(x)}" for x in values[1:])
    return f"{text} = {frac(sum(values, Fraction(0)))}"


def linear_equation(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    v, x = letter(rng), rng.randint(-30, 30)
    # Terms with their side: the unknown on both sides and numbers on both sides in every arrangement.
    left = [(_coef(rng, 12 if rng.random() < 0.7 else 400), v)]
    right: list[tuple[int, str]] = []
    for _ in range(rng.randint(0, 2)):
        (left if rng.random() < 0.5 else right).append((_coef(rng, 12 if rng.random() < 0.7 else 300), v))
    for _ in range(rng.randint(1, 2)):
        (left if rng.random() < 0.5 else right).append((_coef(rng, 99 if rng.random() < 0.7 else 9999), ""))
    k = sum(c for c, t in left if t) - sum(c for c, t in right if t)
    if k == 0:
        return linear_equation(rng, d)
    # The last number is chosen so x solves the equation.
    m = k * x
    lhs_const = sum(c for c, t in left if not t)
    rhs_const = sum(c for c, t in right if not t)
    fix = m - (rhs_const - lhs_const)
    if fix:
        right.append((fix, ""))
    rng.shuffle(left)
    rng.shuffle(right)
    eq = f"{linear(left)} = {linear(right)}"
    v_terms = [c for c, t in left if t] + [-c for c, t in right if t]
    numbers = [c for c, t in right if not t] + [-c for c, t in left if not t]
    steps = [task(f"solve {eq} for {v}"), f"Move the {v} terms to the left and the numbers to the right.",
             f"{v}: {_sum_line(v_terms)}." if len(v_terms) > 1 else f"{v}: {v_terms[0]}.",
             f"Numbers: {_sum_line(numbers)}." if len(numbers) > 1 else f"Numbers: {numbers[0] if numbers else 0}.",
             f"{k}*{v} = {m}, so {v} = {m}/{_show(Fraction(k))} = {x}." if k != 1 else f"So {v} = {m}."]
    check(sum(v_terms) == k and sum(numbers, 0) == m and m == k * x, "linear equation")
    topic = ("To solve a linear equation, gather the unknown's terms on one side and the numbers on the other, add "
             "each side up, then divide by the unknown's coefficient.")
    return _SOLVE.ask(rng, eq=eq, v=v), steps, str(x), topic


def linear_system(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    v = letter(rng)
    w = letter(rng, avoid=v)
    xv, xw = rng.randint(-15, 15), rng.randint(-15, 15)
    while True:
        a1, b1, a2, b2 = (_coef(rng, 9) for _ in range(4))
        if a1 * b2 - a2 * b1:
            break
    c1, c2 = a1 * xv + b1 * xw, a2 * xv + b2 * xw
    e1, e2 = f"{linear([(a1, v), (b1, w)])} = {c1}", f"{linear([(a2, v), (b2, w)])} = {c2}"
    ask = rng.choice((v, w))
    # Eliminate the other unknown: scale each equation by the other's coefficient of it, subtract.
    keep, drop = (v, w) if ask == v else (w, v)
    p1, q1 = (a1, b1) if keep == v else (b1, a1)
    p2, q2 = (a2, b2) if keep == v else (b2, a2)
    k, m = p1 * q2 - p2 * q1, c1 * q2 - c2 * q1
    answer = xv if keep == v else xw
    s = [_show(Fraction(n)) for n in (p1, q2, p2, q1, c1, c2)]
    steps = [task(f"solve {e1}, {e2} for {ask}"),
             f"Remove {drop}: first equation times {s[1]}, minus second equation times {s[3]}.",
             f"({s[0]}*{s[1]} - {s[2]}*{s[3]})*{keep} = {s[4]}*{s[1]} - {s[5]}*{s[3]}, so {k}*{keep} = {m}.",
             f"{keep} = {m}/{_show(Fraction(k))} = {answer}."]
    check(m == k * answer, "linear system")
    topic = ("To solve two linear equations, scale them so one unknown has the same coefficient in both, subtract to "
             "remove it, and solve for the other.")
    return _SOLVE2.ask(rng, e1=e1, e2=e2, v=ask), steps, str(answer), topic


def _poly_text(coeffs: list[int], v: str, pw: str) -> str:
    return poly(coeffs, v).replace("^", pw)


def polynomials(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    v, f, pw = letter(rng), function_name(rng), power_sign(rng)
    kind = rng.choice(("evaluate", "evaluate", "differentiate", "collect", "expand"))
    deg = rng.randint(1, 3)
    coeffs = [_coef(rng, 12 if rng.random() < 0.7 else 300)] + [rng.randint(-20, 20) for _ in range(deg)]
    p = _poly_text(coeffs, v, pw)
    if kind == "evaluate":
        x = rng.randint(-9, 9)
        steps, total = [], []
        for i, c in enumerate(coeffs):
            power = deg - i
            if not c:
                continue
            if power == 0:
                total.append(c)
            elif power == 1:
                steps.append(f"{c}*({x}) = {c * x}")
                total.append(c * x)
            else:
                steps.append(f"({x}){pw}{power} = {x ** power}, {c}*{x ** power} = {c * x ** power}")
                total.append(c * x ** power)
        value = sum(total)
        lines = [task(f"{p} at {v} = {x}"),
                 f"Term by term: {'; '.join(steps)}." if steps else "No terms in the unknown.",
                 f"Add: {_sum_line(total)}." if len(total) > 1 else f"So the value is {value}."]
        check(value == sum(c * x ** (deg - i) for i, c in enumerate(coeffs)), "evaluation")
        topic = "To evaluate a polynomial, work out each power, multiply by its coefficient, then add the terms."
        return _EVALUATE.ask(rng, f=f, v=v, p=p, x=str(x)), lines, str(value), topic
    if kind == "differentiate":
        times = 1 if rng.random() < 0.7 else 2
        deg = max(deg, times + 1)
        coeffs = [_coef(rng, 12)] + [rng.randint(-20, 20) for _ in range(deg)]
        p = _poly_text(coeffs, v, pw)
        steps, cur = [task(f"d/d{v} of {p}" + (" twice" if times == 2 else ""))], coeffs
        for _ in range(times):
            n = len(cur) - 1
            rows = [f"{c}*{v}{pw}{n - i} -> {(n - i) * c}*{v}" + (f"{pw}{n - i - 1}" if n - i > 2 else "")
                    for i, c in enumerate(cur[:-2]) if c]
            if cur[-2]:
                rows.append(f"{cur[-2]}*{v} -> {cur[-2]}")
            new = [(n - i) * c for i, c in enumerate(cur[:-1])]
            steps.append(f"Power rule, term by term: {'; '.join(rows)}; a constant -> 0. Result: "
                         f"{_poly_text(new, v, pw)}.")
            cur = new
        check(all(c == (deg - i) * (deg - i - 1 if times == 2 else 1) * coeffs[i] for i, c in enumerate(cur)),
              "derivative")
        topic = "The power rule: c*x^n differentiates to n*c*x^(n-1); a constant differentiates to 0."
        book = _DIFF if times == 1 else _DIFF2
        return book.ask(rng, f=f, v=v, p=p), steps, _poly_text(cur, v, "^"), topic
    if kind == "collect":
        terms = [(rng.randint(-15, 15) or 1, rng.choice((f"{v}{pw}2", v, ""))) for _ in range(rng.randint(3, 6))]
        e = linear(terms)
        groups = {}
        for c, t in terms:
            groups.setdefault(t, []).append(c)
        rows, result = [], []
        for t in (f"{v}{pw}2", v, ""):
            if t in groups:
                total = sum(groups[t])
                rows.append(f"{t or 'numbers'}: {_sum_line(groups[t]) if len(groups[t]) > 1 else total}")
                result.append(total)
            else:
                result.append(0)
        answer = poly(result, v)
        topic = "Like terms have the same letter and power; add their coefficients."
        steps = [task(f"collect {e}"), f"Group like terms: {'; '.join(rows)}.", f"So {answer.replace('^', pw)}."]
        return _COLLECT.ask(rng, e=e), steps, answer, topic
    a, b, c, e = _coef(rng, 6), rng.randint(-12, 12), _coef(rng, 6), rng.randint(-12, 12)
    expr = f"({linear([(a, v), (b, '')])})*({linear([(c, v), (e, '')])})"
    result = [a * c, a * e + b * c, b * e]
    sa, sb, sc, se = (_show(Fraction(n)) for n in (a, b, c, e))
    steps = [task(f"expand {expr}"),
             f"Each term times each term: {sa}*{sc} = {a * c} ({v}{pw}2); {sa}*{se} + {sb}*{sc} = {a * e + b * c} "
             f"({v}); {sb}*{se} = {b * e}.", f"So {_poly_text(result, v, pw)}."]
    topic = "To expand a product of brackets, multiply every term of one by every term of the other, then collect."
    return _EXPAND.ask(rng, e=expr), steps, poly(result, v), topic


# --- expressions with brackets and fractions -----------------------------------------------------------------------

def _operand(rng: random.Random) -> Fraction:
    if rng.random() < 0.25:
        return Fraction(_coef(rng, 12), rng.randint(2, 9))
    return Fraction(_coef(rng, 99 if rng.random() < 0.7 else 999))


def _show(x: Fraction) -> str:
    return f"({frac(x)})" if x < 0 or x.denominator != 1 else frac(x)


def _expression(rng: random.Random, depth: int) -> tuple[str, Fraction, list[str]]:
    """A random expression tree, its exact value, and the lines that evaluate it innermost first."""
    if depth == 0:
        x = _operand(rng)
        return _show(x), x, []
    op = rng.choice("+-*/")
    left, lv, ls = _expression(rng, depth - 1 if rng.random() < 0.8 else 0)
    right, rv, rs = _expression(rng, depth - 1 if rng.random() < 0.5 else 0)
    if op == "/" and rv == 0:
        op = "+"
    value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else lv}[op]
    line = f"{frac(lv)} {op} {_show(rv)} = {frac(value)}"
    text = f"{left} {op} {right}"
    return (f"({text})", value, ls + rs + [line])


def expressions(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    for _ in range(50):
        text, value, lines = _expression(rng, rng.randint(2, 3))
        if abs(value.numerator) < 10 ** 6 and value.denominator < 1000 and len(lines) <= 6:
            break
    text = text[1:-1]  # the outermost operation's brackets
    steps = [task(text), f"Innermost brackets first, one operation at a time: {'; '.join(lines)}."]
    topic = ("Work out an expression from the innermost brackets outwards, one operation at a time, keeping "
             "fractions exact and in lowest terms.")
    return VALUE_OF.ask(rng, e=text), steps, frac(value), topic


# --- problems that chain steps -------------------------------------------------------------------------------------

def chained(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    v = letter(rng)
    value = Fraction(rng.randint(-20, 20))
    if rng.random() < 0.5:
        a = rng.randint(-60, 60)
        op = rng.choice("+-*")
        if op == "*":
            b = rng.choice([n for n in range(-9, 10) if n and value % n == 0])
            definition = f"{_show(Fraction(int(value) // b))} * {_show(Fraction(b))}"
        else:
            b = int(value) - a if op == "+" else a - int(value)
            definition = f"{a} {op} {_show(Fraction(b))}"
        first = f"{v} = {definition} = {frac(value)}."
        question_book, slots = _CHAIN, {"d": definition}
    else:
        k = _coef(rng, 9)
        c = rng.randint(-30, 30)
        eq = f"{linear([(k, v), (c, '')])} = {k * int(value) + c}"
        rhs = k * int(value) + c
        first = (f"From {eq}: {k}*{v} = {rhs} - {_show(Fraction(c))} = {rhs - c}, so {v} = "
                 f"{rhs - c}/{_show(Fraction(k))} = {frac(value)}.")
        question_book, slots = _CHAIN_SOLVE, {"eq": eq}
    c1, c0 = _coef(rng, 12), rng.randint(-40, 40)
    pw = power_sign(rng)
    if rng.random() < 0.5:
        e = linear([(c1, v), (c0, "")])
        result = c1 * value + c0
        second = f"{e} = {c1}*({frac(value)}){term(c0, '', False)} = {frac(result)}."
    else:
        e = linear([(1, f"{v}{pw}2"), (c1, v)])
        result = value ** 2 + c1 * value
        second = f"{e} = {frac(value ** 2)}{term(int(c1 * value), '', False)} = {frac(result)}."
    given = f"{v} = {slots['d']}" if question_book is _CHAIN else slots["eq"]
    steps = [task(f"{e} where {given}"), first, f"Substitute: {second}"]
    topic = "A chained problem: work out the defined quantity first, then substitute it into what is asked."
    if question_book is _CHAIN:
        return _CHAIN.ask(rng, v=v, d=slots["d"], e=e), steps, frac(result), topic
    return _CHAIN_SOLVE.ask(rng, eq=slots["eq"], e=e), steps, frac(result), topic
