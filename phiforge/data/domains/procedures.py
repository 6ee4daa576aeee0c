"""Worked procedures a small model can execute step by step, shared by the school-maths curriculum generators.

Each function returns the lines of a procedure and its exact result, and checks the result against Python's own
arithmetic before a line is used: column addition and subtraction least significant digit first (one short row per
column, the carry or borrow visible in the next row), a product by one digit, long division one brought-down digit
per row, Euclid's remainders, trial division, signed and decimal reduction to whole-number work.

Rows are terse on purpose (transfer-notes §2): tokens are the training budget, and a row such as `15-1-9=5` carries
what "Tens: 10 + 5 - 1 - 9 = 5, borrow 1." does in a third of the tokens.
"""

from __future__ import annotations

import math
from fractions import Fraction

from phiforge.data.domains.common import check, dec, frac


def places(x: Fraction) -> int:
    """Decimal places of a finite decimal (refuses 1/3)."""
    x, n = Fraction(x), 0
    while (x * 10 ** n).denominator != 1:
        n += 1
        check(n <= 40, f"{x} is not a finite decimal")
    return n


def _digit(n: int, i: int) -> int:
    return n // 10 ** i % 10


def add_rows(a: int, b: int) -> tuple[str, int]:
    """a + b for a, b >= 0, one row per column from the right: `5+9+1=15` writes 5 and carries 1 to the next row."""
    rows, carry = [], 0
    for i in range(max(len(str(a)), len(str(b)))):
        x, y = _digit(a, i), _digit(b, i)
        parts = [str(x)] + ([str(y)] if i < len(str(b)) else []) + (["1"] if carry else [])
        total = x + y + carry
        rows.append("+".join(parts) + (f"={total}" if len(parts) > 1 else ""))
        carry = total // 10
    if carry:
        rows.append("1")
    check(int("".join(r.split("=")[-1][-1] for r in reversed(rows))) == a + b, "column addition")
    return "; ".join(rows), a + b


def sub_rows(a: int, b: int) -> tuple[str, int]:
    """a - b for a >= b >= 0: a row `15-1-9=5` borrowed ten here (the leading 1) and pays back 1 from the next row."""
    check(a >= b >= 0, "column subtraction needs a >= b >= 0")
    rows, borrow = [], 0
    for i in range(len(str(a))):
        x, y = _digit(a, i), _digit(b, i)
        need = x - borrow < y
        top = f"1{x}" if need else f"{x}"
        parts = [top] + (["1"] if borrow else []) + ([str(y)] if i < len(str(b)) else [])
        value = x - borrow - y + (10 if need else 0)
        rows.append("-".join(parts) + (f"={value}" if len(parts) > 1 else ""))
        borrow = 1 if need else 0
    check(borrow == 0 and int("".join(r.split("=")[-1][-1] for r in reversed(rows))) == a - b, "column subtraction")
    return "; ".join(rows), a - b


def times_digit_rows(a: int, k: int) -> tuple[str, int]:
    """a * k for one digit k, one row per digit of a: `4*7+3=31` writes 1 and carries 3."""
    rows, carry = [], 0
    for i in range(len(str(a))):
        x = _digit(a, i)
        total = x * k + carry
        rows.append(f"{x}*{k}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    if carry:
        rows.append(str(carry))
    return "; ".join(rows), a * k


def long_division_rows(a: int, b: int) -> tuple[str, int, int]:
    """a = q*b + r for a >= 0, b > 0, one row per digit brought down once the part reached b: `126/45=2 r36`."""
    check(a >= 0 and b > 0, "long division needs a >= 0 and b > 0")
    rows, cur, q = [], 0, 0
    for ch in str(a):
        cur = cur * 10 + int(ch)
        digit, cur_r = divmod(cur, b)
        if rows or digit or cur == a:
            rows.append(f"{cur}/{b}={digit} r{cur_r}")
        q, cur = q * 10 + digit, cur_r
    check(q == a // b and cur == a % b, "long division")
    return "; ".join(rows) or f"{a}/{b}=0 r{a}", q, cur


def euclid_rows(a: int, b: int) -> tuple[str, int]:
    """gcd by Euclid's remainders: `84 mod 36 = 12; 36 mod 12 = 0`."""
    big, small = max(a, b), min(a, b)
    rows = []
    while small:
        rows.append(f"{big} mod {small} = {big % small}")
        big, small = small, big % small
    check(big == math.gcd(a, b), "gcd")
    return "; ".join(rows), big


def signed_sum_lines(a: Fraction, b: Fraction) -> tuple[list[str], Fraction]:
    """a + b for finite decimals of any sign: the sign rule turns it into one column addition or subtraction of
    whole numbers (the points lined up), then the point and the sign go back."""
    a, b = Fraction(a), Fraction(b)
    total = a + b
    big, small = (a, b) if abs(a) >= abs(b) else (b, a)
    k = max(places(a), places(b))
    p, q = abs(big) * 10 ** k, abs(small) * 10 ** k
    lines = []
    if (a >= 0) == (b >= 0) or 0 in (a, b):
        sign = "-" if a < 0 or b < 0 else ""
        op, (rows, whole) = "+", add_rows(int(p), int(q))
        lines.append(f"Same sign: {sign}({dec(abs(big))} + {dec(abs(small))})." if sign else
                     f"Add {dec(abs(big))} + {dec(abs(small))}.")
    else:
        sign = "-" if big < 0 else ""
        op, (rows, whole) = "-", sub_rows(int(p), int(q))
        body = f"{dec(abs(big))} - {dec(abs(small))}"
        lines.append(f"Signs differ: -({body}), the sign of the larger size." if sign else f"Signs differ: {body}.")
    if k:
        lines.append(f"Without the points ({k} decimals): {int(p)} {op} {int(q)}.")
    lines.append(f"Columns from the right: {rows}.")
    lines.append(f"Result: {sign}{dec(Fraction(whole, 10 ** k))}.")
    check(Fraction(f"{sign}{whole}") / 10 ** k == total, "signed sum")
    return lines, total


def product_lines(a: Fraction, b: Fraction) -> tuple[list[str], Fraction]:
    """a * b for finite decimals: whole-number long multiplication by the factor with fewer nonzero digits, one
    line per nonzero digit (its partial product shifted into place), the partials added, then sign and point."""
    a, b = Fraction(a), Fraction(b)
    k = places(a) + places(b)
    m, n = int(abs(a) * 10 ** places(a)), int(abs(b) * 10 ** places(b))
    if sum(c != "0" for c in str(m)) < sum(c != "0" for c in str(n)):
        m, n = n, m
    lines = []
    sign = "-" if (a < 0) != (b < 0) and a and b else ""
    if sign or a < 0:
        lines.append("Signs: " + ("one negative factor, so the product is negative." if sign
                                  else "two negative factors, so the product is positive."))
    if k:
        lines.append(f"Without the points: {m} * {n}, then {k} decimal places back.")
    partials = []
    for i in reversed(range(len(str(n)))):
        digit = _digit(n, i)
        if digit == 0:
            continue
        if digit == 1 or m < 10:
            value = m * digit
            text = f"{m}*{digit} = {value}"
        else:
            rows, value = times_digit_rows(m, digit)
            text = f"{m}*{digit}: {rows} -> {value}"
        shifted = value * 10 ** i
        partials.append(shifted)
        lines.append(text + (f", shifted {i}: {shifted}." if i else "."))
    whole = 0
    if len(partials) > 1:
        whole = partials[0]
        for part in partials[1:]:
            rows, new = add_rows(whole, part)
            lines.append(f"{whole} + {part}: {rows} -> {new}.")
            whole = new
    else:
        whole = partials[0] if partials else 0
    check(whole == m * n, "long multiplication")
    result = Fraction(whole * (-1 if sign else 1), 10 ** k)
    lines.append(f"Result: {dec(result)}.")
    check(result == a * b, "signed product")
    return lines, result


def quotient_lines(a: int, b: int) -> tuple[list[str], Fraction]:
    """a / b for integers: long division; an exact one is the answer, otherwise the fraction a/b in lowest terms,
    its gcd from the division's own remainder (gcd(a, b) = gcd(b, r))."""
    check(b != 0, "division by zero")
    sign = "-" if (a < 0) != (b < 0) and a else ""
    lines = []
    if a < 0 or b < 0:
        lines.append(f"Signs: the quotient is {'negative' if sign else 'positive'}.")
    rows, q, r = long_division_rows(abs(a), abs(b))
    lines.append(f"Long division: {rows}.")
    if r == 0:
        lines.append(f"No remainder: {sign}{q}.")
    else:
        g_rows, g = euclid_rows(abs(b), r)
        lines.append(f"Remainder {r}, so keep a fraction: gcd({abs(a)}, {abs(b)}) = gcd({abs(b)}, {r}): {g_rows}, so "
                     f"gcd = {g}.")
        lines.append(f"{sign}{abs(a)}/{abs(b)} = {sign}{frac(Fraction(abs(a), abs(b)))}.")
    result = Fraction(a, b)
    check(Fraction(f"{sign}{q}") == result if r == 0 else Fraction(abs(a) // g, abs(b) // g) == abs(result),
          "quotient")
    return lines, result


def round_lines(x: Fraction, k: int) -> tuple[list[str], Fraction]:
    """x rounded to a multiple of 10**k (k < 0: to -k decimal places), halves away from zero: look at the digit
    just right of the kept one."""
    x = Fraction(x)
    unit = Fraction(10) ** k
    size = abs(x)
    kept = size // unit
    next_digit = int(size / unit * 10) % 10
    up = next_digit >= 5
    value = (kept + (1 if up else 0)) * unit * (-1 if x < 0 else 1)
    lines = [f"Keep digits down to the {_place_name(k)}; the next digit to the right is {next_digit}, "
             + ("5 or more, so round up." if up else "less than 5, so round down.")]
    check(abs(value - x) <= unit / 2, "rounding")
    return lines, value


def _place_name(k: int) -> str:
    names = {0: "ones", 1: "tens", 2: "hundreds", 3: "thousands", 4: "ten thousands", 5: "hundred thousands",
             6: "millions", -1: "tenths", -2: "hundredths", -3: "thousandths", -4: "ten-thousandths"}
    return names[k]


PLACE_NAMES = {k: _place_name(k) for k in range(-4, 7)}
