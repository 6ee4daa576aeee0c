"""Formatting and self-check helpers shared by the domain generators in this package.

Kept apart from `problems.py` so the generator modules never import it (it imports them), and so the helpers of the
four original domains there stay untouched: their output is pinned byte for byte.
The generators import sympy inside their bodies: importing it costs a noticeable fraction of a second, which every
`phiforge` command would otherwise pay just for importing `phiforge.data.problems`.
"""

from __future__ import annotations

import math
from fractions import Fraction


def check(ok: bool, what: str) -> None:
    # Not a bare assert: a wrong answer in training data must never slip through under `python -O`.
    if not ok:
        raise AssertionError(f"teacher self-check failed: {what}")


def dec(x: Fraction | int) -> str:
    """Exact decimal form without trailing zeros ("7.95", "12", "-0.5"); refuses a non-terminating value."""
    x = Fraction(x)
    places = 0
    while (x * 10 ** places).denominator != 1:
        places += 1
        check(places <= 40, f"{x} has no finite decimal form")
    return fixed(int(x * 10 ** places), places)


def fixed(n: int, places: int) -> str:
    """n / 10**places written with exactly `places` decimals: fixed(420, 3) == "0.420"."""
    sign, n = ("-" if n < 0 else ""), abs(n)
    if places == 0:
        return f"{sign}{n}"
    whole, part = divmod(n, 10 ** places)
    return f"{sign}{whole}.{part:0{places}d}"


def frac(x: Fraction | int) -> str:
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def par(n) -> str:
    """A number as an operand: negatives in parentheses so "3 * (-2)" never reads as subtraction."""
    text = n if isinstance(n, str) else dec(n) if isinstance(n, Fraction) else str(n)
    return f"({text})" if text.startswith("-") else text


def lowest_terms(num: int, den: int) -> tuple[str, str]:
    """The sentence that reduces num/den (same shape as the fractions domain) and the reduced answer."""
    g = math.gcd(num, den)
    answer = frac(Fraction(num, den))
    if g == 1:
        return f"gcd({abs(num)}, {den}) = 1, so {answer} is in lowest terms.", answer
    return f"gcd({abs(num)}, {den}) = {g}, so {num}/{den} = {answer}.", answer


def term(coef: int, var: str, first: bool) -> str:
    """One signed term of a sum: "3*x", " - x", " + 2*y"; a coefficient of 1 is left implicit."""
    body = var if abs(coef) == 1 and var else f"{abs(coef)}*{var}" if var else f"{abs(coef)}"
    if first:
        return f"-{body}" if coef < 0 else body
    return f" - {body}" if coef < 0 else f" + {body}"


def poly(coeffs: list[int], var: str = "x") -> str:
    """Highest degree first: poly([1, -3, -10]) == "x^2 - 3*x - 10"."""
    deg = len(coeffs) - 1
    parts = []
    for i, c in enumerate(coeffs):
        if c:
            power = deg - i
            name = "" if power == 0 else var if power == 1 else f"{var}^{power}"
            parts.append(term(c, name, not parts))
    return "".join(parts) or "0"


def linear(pairs: list[tuple[int, str]]) -> str:
    """a*x + b*y with zero terms dropped."""
    parts = []
    for c, v in pairs:
        if c:
            parts.append(term(c, v, not parts))
    return "".join(parts) or "0"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def product_steps(factors: list[int]) -> tuple[str, int]:
    """"7 * 6 = 42, 42 * 5 = 210": one multiplication per clause, so each clause is a single fact."""
    value = factors[0]
    if len(factors) == 1:
        return f"{value}", value
    clauses = []
    for f in factors[1:]:
        clauses.append(f"{value} * {f} = {value * f}")
        value *= f
    return ", ".join(clauses), value


def sym(text: str):
    """The teacher's own answer string as a sympy expression, for independent re-checks (never model output)."""
    import sympy

    return sympy.sympify(text.replace("^", "**"), locals={"x": sympy.Symbol("x"), "pi": sympy.pi})
