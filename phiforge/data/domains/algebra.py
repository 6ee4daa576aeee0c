"""Algebra domains: quadratics and polynomials, 2x2 linear systems, arithmetic and geometric sequences.

Each generator builds the answer from planted integers (roots, solutions, terms) and then re-derives it with sympy or
by plain execution, so a template slip can never reach the training data.
"""

from __future__ import annotations

import math
import random

from phiforge.data.domains.common import check, linear, ordinal, par, poly, sym


def _root_factor(r: int) -> str:
    return f"(x - {r})" if r > 0 else f"(x + {-r})"


def _nonzero(rng: random.Random, hi: int) -> int:
    return rng.choice([-1, 1]) * rng.randint(1, hi)


def _sum_product(b: int, c: int, r1: int, r2: int) -> str:
    # Writing the numbers as -r1 and -r2 ties "product c, sum b" to the factors (x - r1)(x - r2) directly.
    return f"Two numbers with product {c} and sum {b} are {-r1} and {-r2}."


# --- quadratics and polynomials -------------------------------------------------------------

def quadratics(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    import sympy

    x = sympy.Symbol("x")
    kind = rng.choice(("factor", "solve", "expand", "evaluate"))
    hi = 6 * d + 3
    if kind in ("factor", "solve"):
        r1, r2 = _nonzero(rng, hi), _nonzero(rng, hi)
        while kind == "solve" and r1 == r2:
            r2 = _nonzero(rng, hi)
        b, c = -(r1 + r2), r1 * r2
        monic = poly([1, b, c])
        if kind == "factor":
            k = rng.randint(2, d + 1) if d >= 2 and rng.random() < 0.5 else 1
            factored = f"{_root_factor(r1)}*{_root_factor(r2)}"
            steps = []
            if k > 1:
                steps.append(f"Take out the common factor {k}: {poly([k, k * b, k * c])} = {k}*({monic}).")
            steps += [_sum_product(b, c, r1, r2), f"So {monic} = {factored}."]
            answer = f"{k}*{factored}" if k > 1 else factored
            expr = k * (x ** 2 + b * x + c)
            check(sympy.expand(sym(answer) - expr) == 0 and set(sympy.Poly(expr, x).all_roots()) == {r1, r2},
                  "factoring")
            topic = ("To factor x^2 + b*x + c, find two numbers whose product is c and whose sum is b; "
                     "if they are p and q, then x^2 + b*x + c = (x + p)*(x + q).")
            return f"Factor {poly([k, k * b, k * c])}.", steps, answer, topic
        which = rng.choice(("larger", "smaller"))
        steps = []
        if d >= 2 and rng.random() < 0.5:
            # c on the right-hand side adds one "move everything to one side" step before factoring.
            question = f"Solve {poly([1, b, 0])} = {-c}."
            verb = f"Subtract {-c} from" if -c > 0 else f"Add {c} to"
            steps.append(f"{verb} both sides: {monic} = 0.")
        else:
            question = f"Solve {monic} = 0."
        steps += [_sum_product(b, c, r1, r2), f"So {_root_factor(r1)}*{_root_factor(r2)} = 0.",
                  f"{_root_factor(r1)[1:-1]} = 0 gives x = {r1} and {_root_factor(r2)[1:-1]} = 0 gives x = {r2}."]
        answer = max(r1, r2) if which == "larger" else min(r1, r2)
        steps.append(f"The {which} solution is {answer}.")
        roots = sorted(sympy.Poly([1, b, c], x).all_roots())
        check(roots == sorted([r1, r2]) and answer == (roots[-1] if which == "larger" else roots[0]), "solve")
        topic = ("To solve a quadratic equation, move every term to one side, factor it, and set each factor "
                 "equal to zero: a product is zero only when one of its factors is zero.")
        return f"{question} What is the {which} solution?", steps, str(answer), topic
    if kind == "expand":
        p, q = (1, 1) if d == 1 else (rng.randint(1, d), rng.randint(1, d))
        a, b = _nonzero(rng, hi), _nonzero(rng, hi)
        left, right = linear([(p, "x"), (a, "")]), linear([(q, "x"), (b, "")])
        sq, mid1, mid2, const = p * q, p * b, a * q, a * b
        mid = mid1 + mid2
        answer = poly([sq, mid, const])
        combine = (f"Combine the x terms: {mid1} + {par(mid2)} = {mid}, giving "
                   + (f"{linear([(mid, 'x')])}." if mid else "0, so they cancel."))
        steps = [f"Multiply each term of the first factor by each term of the second: "
                 f"{linear([(p, 'x')])} * {linear([(q, 'x')])} = {poly([sq, 0, 0])}, "
                 f"{linear([(p, 'x')])} * {par(b)} = {linear([(mid1, 'x')])}, "
                 f"{par(a)} * {linear([(q, 'x')])} = {linear([(mid2, 'x')])}, {par(a)} * {par(b)} = {const}.",
                 combine, f"So the product is {answer}."]
        check(sympy.expand((p * x + a) * (q * x + b)) == sym(answer), "expand")
        topic = ("To expand a product of two binomials, multiply each term of the first by each term of the "
                 "second and then combine like terms.")
        return f"Expand ({left})*({right}).", steps, answer, topic
    degree = rng.randint(2, d + 1)
    coeffs = [_nonzero(rng, 3 + d)] + [rng.randint(-3 - d, 3 + d) for _ in range(degree)]
    at = rng.randint(-2 - d, 2 + d)
    steps, values = [], []
    for i, c in enumerate(coeffs):
        power = degree - i
        if not c:
            continue
        if power == 0:
            values.append(c)
            continue
        value = c * at ** power
        base = par(at) if power == 1 else f"{par(at)}^{power}"
        inner = f"{c}*{par(at ** power)}" if power > 1 else ""
        steps.append(f"{c}*{base} = " + (f"{inner} = " if inner else "") + f"{value}.")
        values.append(value)
    total = sum(values)
    steps.append(f"Add the terms: {' + '.join(par(v) for v in values)} = {total}.")
    check(sympy.Poly(coeffs, x).eval(at) == total, "polynomial value")
    topic = ("To evaluate a polynomial at a number, replace x by that number in every term, work out each term, "
             "and add the results.")
    return f"Evaluate p(x) = {poly(coeffs)} at x = {at}.", steps, str(total), topic


# --- linear systems ---------------------------------------------------------------------------

def linear_systems(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    import sympy

    top = 1 + 2 * d
    while True:
        a1, b1, a2, b2 = (_nonzero(rng, top) for _ in range(4))
        if a1 * b2 - a2 * b1 != 0:
            break
    x, y = rng.randint(-4 * d, 4 * d), rng.randint(-4 * d, 4 * d)
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    eq1, eq2 = f"{linear([(a1, 'x'), (b1, 'y')])} = {c1}", f"{linear([(a2, 'x'), (b2, 'y')])} = {c2}"
    # Scale both equations so their y coefficients are equal or opposite, then subtract or add to remove y.
    lcm = math.lcm(abs(b1), abs(b2))
    m1, m2 = lcm // abs(b1), lcm // abs(b2)
    A1, B1, C1, A2, B2, C2 = a1 * m1, b1 * m1, c1 * m1, a2 * m2, b2 * m2, c2 * m2
    steps = []
    for which, m, A, B, C in (("first", m1, A1, B1, C1), ("second", m2, A2, B2, C2)):
        if m != 1:
            steps.append(f"Multiply the {which} equation by {m}: {linear([(A, 'x'), (B, 'y')])} = {C}.")
    if B1 == B2:
        k, r = A1 - A2, C1 - C2
        steps.append(f"Subtract the second equation from the first: {linear([(k, 'x')])} = {C1} - {par(C2)} = {r}.")
    else:
        k, r = A1 + A2, C1 + C2
        steps.append(f"Add the two equations: {linear([(k, 'x')])} = {C1} + {par(C2)} = {r}.")
    if k != 1:
        steps.append(f"Divide by {k}: x = {r} / {par(k)} = {x}.")
    rest = c1 - a1 * x
    steps.append(f"Put x = {x} into the first equation: {linear([(b1, 'y')])} = {c1} - {par(a1 * x)} = {rest}.")
    if b1 != 1:
        steps.append(f"Divide by {b1}: y = {rest} / {par(b1)} = {y}.")
    steps.append(f"So x = {x} and y = {y}.")
    ask = rng.choice("xy")
    X, Y = sympy.symbols("x y")
    solution = sympy.linsolve([a1 * X + b1 * Y - c1, a2 * X + b2 * Y - c2], [X, Y])
    check(solution == sympy.FiniteSet((x, y)) and k * x == r and b1 * y == rest, "linear system")
    topic = ("To solve two linear equations by elimination, multiply them so one variable has the same "
             "coefficient in both, subtract to remove it, solve for the other, then substitute back.")
    question = f"Solve the system {eq1} and {eq2}. What is {ask}?"
    return question, steps, str(x if ask == "x" else y), topic


# --- sequences and series ---------------------------------------------------------------------

def sequences(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    geometric = rng.random() < 0.5
    want_sum = rng.random() < 0.5
    if geometric:
        a = rng.randint(1, 2 + d)
        r = rng.randint(2, 2 + d // 2) * (rng.choice([-1, 1]) if d >= 3 else 1)
        n = rng.randint(4, 5 + d)
    else:
        a = rng.randint(1, 10 * d) * (rng.choice([-1, 1]) if d >= 2 else 1)
        r = rng.randint(1, 4 + 2 * d) * (rng.choice([-1, 1]) if d >= 2 else 1)
        n = rng.randint(6, 10 + 10 * d)
    terms = [a * r ** i if geometric else a + r * i for i in range(n)]
    shown = ", ".join(str(t) for t in terms[:4])
    kind = "geometric" if geometric else "arithmetic"
    question = (f"What is the sum of the first {n} terms of the {kind} sequence {shown}, ...?" if want_sum
                else f"What is the {ordinal(n)} term of the {kind} sequence {shown}, ...?")
    last = terms[-1]
    if geometric:
        steps = [f"The first term is a = {a} and the common ratio is r = {terms[1]} / {par(a)} = {r}."]
        power = r ** (n - 1)
        steps.append(f"The {ordinal(n)} term is a*r^({n} - 1) = {a}*{par(r)}^{n - 1} = {a}*{par(power)} = {last}.")
        if want_sum:
            top = r ** n - 1
            steps.append(f"The sum of n terms is a*(r^n - 1)/(r - 1) = {a}*({par(r)}^{n} - 1)/({r} - 1) "
                         f"= {a}*({r ** n} - 1)/{par(r - 1)} = {a}*{par(top)}/{par(r - 1)} "
                         f"= {a * top}/{par(r - 1)} = {a * top // (r - 1)}.")
    else:
        steps = [f"The first term is a = {a} and the common difference is d = {terms[1]} - {par(a)} = {r}."]
        steps.append(f"The {ordinal(n)} term is a + (n - 1)*d = {a} + {n - 1}*{par(r)} = {a} + {par((n - 1) * r)} "
                     f"= {last}.")
        if want_sum:
            steps.append(f"The sum of n terms is n*(first + last)/2 = {n}*({a} + {par(last)})/2 = {n}*{a + last}/2 "
                         f"= {n * (a + last)}/2 = {n * (a + last) // 2}.")
    answer = sum(terms) if want_sum else last
    if want_sum:
        formula = a * (r ** n - 1) // (r - 1) if geometric else n * (a + last) // 2
        check(formula == answer and (a * (r ** n - 1) % (r - 1) == 0 if geometric else True), "series sum")
    else:
        check(last == (a * r ** (n - 1) if geometric else a + (n - 1) * r), "n-th term")
    topic = ("A geometric sequence multiplies by the same ratio r each time: its n-th term is a*r^(n - 1) and the "
             "sum of its first n terms is a*(r^n - 1)/(r - 1)." if geometric else
             "An arithmetic sequence adds the same difference d each time: its n-th term is a + (n - 1)*d and the "
             "sum of its first n terms is n times the average of the first and last terms.")
    return question, steps, str(answer), topic
