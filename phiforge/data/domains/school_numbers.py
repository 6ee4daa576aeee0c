"""School-maths curriculum, numbers: place value and rounding, comparison and order, signed integer and decimal
arithmetic of 1-12 digits, products and quotients, remainders, divisibility, primes, gcd and lcm, number bases.

Every generator draws its numbers' lengths evenly (a 2-digit and an 11-digit operand are equally likely), asks
through a `Phrasebook` of its own, and solves with the executable procedures of `procedures.py`. Yes/no questions
are answered "yes" or "no" (the evaluation reads "true"/"false" the same way).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

from phiforge.data.domains.common import check, dec, frac
from phiforge.data.domains.phrasing import Phrasebook, task
from phiforge.data.domains.procedures import (PLACE_NAMES, euclid_rows, long_division_rows, places, product_lines,
                                              quotient_lines, round_lines, signed_sum_lines)

MAX_DIGITS = 12


def sized(rng: random.Random, max_digits: int = MAX_DIGITS, decimals: bool = True, negative: float = 0.4) -> Fraction:
    """A number of 1..max_digits significant digits, its length drawn evenly, some of them after the point."""
    n = rng.randint(1, max_digits)
    whole = rng.randint(10 ** (n - 1), 10 ** n - 1) if n > 1 else rng.randint(1, 9)
    after = rng.randint(1, min(n, 10)) if decimals and rng.random() < 0.5 else 0
    value = Fraction(whole, 10 ** after)
    return -value if rng.random() < negative else value


def show(x: Fraction, rng: random.Random | None = None) -> str:
    """A number as an operand, a decimal when it has one and a fraction otherwise; with `rng`, a negative goes bare or
    in brackets."""
    text = dec(x) if places_ok(x) else frac(x)
    if text.startswith("-") and rng is not None and rng.random() < 0.5:
        return f"({text})"
    return text


def places_ok(x: Fraction) -> bool:
    d = Fraction(x).denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    return d == 1


def paren(x: Fraction) -> str:
    """A second operand in the task line: a negative always in brackets, so "5 - (-3)" never reads "5 - -3"."""
    text = show(x)
    return f"({text})" if text.startswith("-") else text


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# --- signed arithmetic ---------------------------------------------------------------------------------------------

_ADD = Phrasebook((
    "Add {a} and {b}.", "What is {a} plus {b}?", "Find the sum of {a} and {b}.", "What do {a} and {b} add up to?",
    "Add {b} to {a}.", "Increase {a} by {b}.", "What is the total of {a} and {b}?", "{a} plus {b} makes what?",
    "Work out the sum {a} + {b}.", "Put {a} and {b} together: what is their sum?", "Sum of {a} and {b}?",
    "If you add {b} to {a}, what do you get?", "Compute {a} + {b}.", "{a} + {b} = ?", "What is {a} + {b}?",
    "Evaluate {a} + {b}.", "Find {a} + {b}.", "Calculate the sum: {a} + {b}.", "Start at {a} and add {b}.",
    "Total {a} and {b}.", "The sum of {a} and {b} is what number?",
))
_SUB = Phrasebook((
    "Subtract {b} from {a}.", "What is {a} minus {b}?", "Take {b} away from {a}.", "Find the difference {a} - {b}.",
    "Decrease {a} by {b}.", "What is left when {b} is taken from {a}?", "{a} minus {b} equals what?",
    "Reduce {a} by {b}.", "Compute {a} - {b}.", "{a} - {b} = ?", "What is {a} - {b}?", "Evaluate {a} - {b}.",
    "Find {a} - {b}.", "Calculate the difference: {a} - {b}.", "Start at {a} and subtract {b}.",
    "From {a}, subtract {b}.", "How much is {a} take away {b}?", "If you take {b} from {a}, what remains?",
    "Work out {a} minus {b}.", "What number is {b} less than {a}?", "Give {a} - {b} as one number.",
))


def signed_arithmetic(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    a, b = sized(rng), sized(rng)
    if rng.random() < 0.5:
        question = _ADD.ask(rng, a=show(a, rng), b=show(b, rng))
        steps, total = signed_sum_lines(a, b)
        steps = [task(f"{show(a)} + {paren(b)}")] + steps
        check(total == a + b, "sum")
    else:
        question = _SUB.ask(rng, a=show(a, rng), b=show(b, rng))
        steps, total = signed_sum_lines(a, -b)
        steps = [task(f"{show(a)} - {paren(b)}"), f"Subtracting {show(b)} is adding {show(-b)}."] + steps
        check(total == a - b, "difference")
    topic = ("To add or subtract signed numbers, use the sign rule to get one addition or subtraction of sizes, "
             "line up the decimal points and work column by column from the right.")
    return question, steps, dec(total), topic


# --- products and quotients ----------------------------------------------------------------------------------------

_MUL = Phrasebook((
    "Multiply {a} by {b}.", "What is {a} times {b}?", "Find the product of {a} and {b}.", "{a} * {b} = ?",
    "What is {a} * {b}?", "Work out {b} times {a}.", "{a} multiplied by {b} is what?", "Compute {a} * {b}.",
    "Evaluate {a} * {b}.", "Calculate the product {a} * {b}.", "What do you get when you multiply {a} and {b}?",
    "Find {a} * {b}.", "Take {a} and multiply it by {b}.", "What is the product of {b} and {a}?",
    "Times {a} by {b}.", "Multiply together {a} and {b}.", "Give the value of {a} * {b}.",
    "How much is {b} times {a}?", "Determine {a} * {b}.", "Work out the product of {a} and {b}.",
))
_DIV = Phrasebook((
    "Divide {a} by {b}.", "What is {a} divided by {b}?", "{a} / {b} = ?", "What is {a} / {b}?",
    "Find the quotient of {a} and {b}.", "Compute {a} / {b}.", "Evaluate {a} / {b}.", "Work out {a} divided by {b}.",
    "What do you get when you divide {a} by {b}?", "Calculate {a} / {b}.", "Find {a} / {b}.",
    "{a} divided by {b} gives what?", "Give {a} / {b} in simplest form.", "Share {a} by {b}: what is the quotient?",
    "Determine {a} / {b}.", "What is the value of {a} over {b}?", "Take {a} and divide it by {b}.",
    "What is the quotient when {a} is divided by {b}?", "Simplify {a}/{b}.", "How much is {a} divided by {b}?",
))


def _few_digits(rng: random.Random, negative: float) -> Fraction:
    """A factor with one or two nonzero digits, sometimes a decimal: the long multiplication stays short."""
    digits = rng.randint(1, 2)
    value = Fraction(rng.randint(10 ** (digits - 1), 10 ** digits - 1) * 10 ** rng.randint(0, 2))
    if rng.random() < 0.4:
        value /= 10 ** rng.randint(1, 4)
    return -value if rng.random() < negative else value


def multiply_divide(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    if rng.random() < 0.5:
        a, b = sized(rng, max_digits=8), _few_digits(rng, 0.4)
        if rng.random() < 0.5:
            a, b = b, a
        question = _MUL.ask(rng, a=show(a, rng), b=show(b, rng))
        steps, value = product_lines(a, b)
        steps = [task(f"{show(a)} * {paren(b)}")] + steps
        topic = ("To multiply, multiply the whole numbers digit by digit, shift each partial product into place and "
                 "add them; then count the decimal places and apply the sign rule.")
        return question, steps, dec(value), topic
    b = rng.randint(2, 10 ** rng.randint(1, 3)) * rng.choice((1, 1, -1))
    q = rng.randint(0, 10 ** rng.randint(1, 6)) * rng.choice((1, 1, -1))
    a = q * b if rng.random() < 0.5 else q * b + rng.randint(1, abs(b) - 1) * (1 if q >= 0 else -1)
    question = _DIV.ask(rng, a=show(Fraction(a), rng), b=show(Fraction(b), rng))
    steps, value = quotient_lines(a, b)
    steps = [task(f"{a} / {paren(Fraction(b))}")] + steps
    topic = ("To divide, use long division; when a remainder is left, the quotient is the fraction in lowest terms, "
             "and the gcd comes from the remainder.")
    return question, steps, frac(value), topic


# --- remainders, divisibility, primes, gcd and lcm -----------------------------------------------------------------

_REMAINDER = Phrasebook((
    "Find the remainder of {a} divided by {b}.", "What is {a} mod {b}?", "Compute {a} modulo {b}.",
    "When you divide {a} by {b}, what is left over?", "{a} is divided by {b}. What is the remainder?",
    "What remainder does {a} leave after division by {b}?", "Give the remainder on dividing {a} by {b}.",
    "What is left over when {a} is split into groups of {b}?", "{a} mod {b} = ?", "Evaluate {a} mod {b}.",
    "Divide {a} by {b} and give the remainder.", "How much remains after dividing {a} by {b}?",
    "What is the remainder of {a} / {b}?", "Find {a} mod {b}.", "After dividing {a} by {b}, what remains?",
    "Work out the remainder: {a} divided by {b}.", "Calculate {a} modulo {b}.",
    "If {a} things are packed {b} to a box, how many are left over?", "Determine {a} mod {b}.",
    "What is the leftover when {b} goes into {a} as many times as it can?",
))
_GCD = Phrasebook((
    "Find the greatest common factor of {a} and {b}.", "What is the largest number that divides both {a} and {b}?",
    "gcd({a}, {b}) = ?", "Compute gcd({a}, {b}).", "What is the biggest common divisor of {a} and {b}?",
    "Find the highest number that divides {a} and {b} exactly.", "What is the gcd of {a} and {b}?",
    "Give the greatest common divisor of {a} and {b}.", "Work out gcd({a}, {b}).", "Find gcd({a}, {b}).",
    "Which is the largest whole number dividing both {a} and {b}?", "Determine the gcd of {a} and {b}.",
    "What is the greatest factor shared by {a} and {b}?", "Evaluate gcd({a}, {b}).",
    "{a} and {b}: what is their greatest common divisor?", "Calculate the gcd of {b} and {a}.",
    "Find the largest common factor of {b} and {a}.", "What is the HCF of {a} and {b}?",
    "Work out the greatest common factor of {b} and {a}.", "Largest divisor common to {a} and {b}?",
))
_LCM = Phrasebook((
    "Find the least common multiple of {a} and {b}.", "What is the smallest number that both {a} and {b} divide?",
    "lcm({a}, {b}) = ?", "Compute lcm({a}, {b}).", "What is the lcm of {a} and {b}?",
    "Give the lowest common multiple of {a} and {b}.", "Work out lcm({a}, {b}).", "Find lcm({a}, {b}).",
    "What is the smallest positive multiple of both {a} and {b}?", "Determine the lcm of {a} and {b}.",
    "Evaluate lcm({a}, {b}).", "{a} and {b}: what is their least common multiple?",
    "Calculate the lcm of {b} and {a}.", "What is the least number divisible by {a} and by {b}?",
    "Find the smallest common multiple of {b} and {a}.", "What is the lowest common denominator of 1/{a} and 1/{b}?",
    "Two lights flash every {a} and every {b} seconds. After how many seconds do they first flash together again?",
    "Work out the least common multiple of {b} and {a}.", "Smallest multiple shared by {a} and {b}?",
    "What common denominator is smallest for fractions over {a} and over {b}?",
))
_PRIME = Phrasebook((
    "Is {n} a prime number?", "Is {n} prime?", "Is {n} prime? Answer yes or no.", "Tell me whether {n} is prime.",
    "Decide whether {n} is a prime.", "Can {n} be written as a product of two smaller whole numbers? (Is it "
    "composite?)", "Is the number {n} prime?", "Check if {n} is prime.", "Yes or no: is {n} a prime?",
    "Is {n} a composite number?", "Is {n} composite?", "Does {n} have a factor other than 1 and itself?",
    "Is it true that {n} is prime?", "Is it true that {n} is composite?", "Is {n} one of the primes?",
    "Would you call {n} prime?", "Find out whether {n} is a prime number.", "Say whether {n} is composite.",
    "Is {n} divisible only by 1 and itself?", "Is {n} not prime?",
))
_DIVIDES = Phrasebook((
    "Is {a} divisible by {b}?", "Does {b} divide {a}?", "Is {a} a multiple of {b}?", "Does {b} go into {a} exactly?",
    "Is {b} a factor of {a}?", "Can {a} be divided by {b} with no remainder?", "Is {a} exactly divisible by {b}?",
    "Is {b} a divisor of {a}?", "Yes or no: does {b} divide {a}?", "Does {a} divided by {b} leave no remainder?",
    "Is {a} / {b} a whole number?", "Check whether {b} divides {a}.", "Tell me if {a} is a multiple of {b}.",
    "Is it true that {b} divides {a}?", "Is {a} in the {b} times table?", "Does {a} have {b} as a factor?",
    "Is there no remainder when {a} is divided by {b}?", "Decide whether {b} is a factor of {a}.",
    "Is {a} evenly divisible by {b}?", "Does {b} divide evenly into {a}?",
))
_SMALL_PRIMES = [p for p in range(2, 200) if all(p % q for q in range(2, int(p ** 0.5) + 1))]


def _planted_pair(rng: random.Random, hi_digits: int) -> tuple[int, int]:
    g = rng.choice((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 18, 20, 21, 24, 25, 30, 36, 48, 60))
    while True:
        a = g * rng.randint(1, max(1, 10 ** rng.randint(1, hi_digits) // g))
        b = g * rng.randint(1, max(1, 10 ** rng.randint(1, hi_digits) // g))
        if a != b and min(a, b) > 1:
            return a, b


def _trial_division(n: int) -> tuple[list[str], bool]:
    rows = []
    for p in _SMALL_PRIMES:
        if p * p > n:
            break
        rows.append(f"{n} mod {p} = {n % p}")
        if n % p == 0:
            return [f"Trial division: {'; '.join(rows)}.", f"{p} divides it: {n} = {p} * {n // p}, not prime."], False
    bound = math.isqrt(n)
    return [f"Trial division by the primes up to sqrt({n}) < {bound + 1}: {'; '.join(rows) or 'none to try'}.",
            "No prime divides it, so it is prime."], True


def divisibility(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    kind = rng.choice(("remainder", "gcd", "lcm", "prime", "divides"))
    if kind == "remainder":
        a, b = int(sized(rng, max_digits=9, decimals=False, negative=0)), rng.randint(2, 10 ** rng.randint(1, 3))
        rows, q, r = long_division_rows(a, b)
        steps = [task(f"{a} mod {b}"), f"Long division: {rows}.", f"So {a} = {q}*{b} + {r}."]
        topic = "The remainder is what long division leaves at the end: a = q*b + r with 0 <= r < b."
        return _REMAINDER.ask(rng, a=str(a), b=str(b)), steps, str(r), topic
    if kind == "gcd":
        a, b = _planted_pair(rng, 7)
        rows, g = euclid_rows(a, b)
        steps = [task(f"gcd({a}, {b})"), f"Euclid: {rows}.", f"The last nonzero remainder is {g}."]
        topic = "Euclid's algorithm: replace the larger number by its remainder on division by the smaller."
        return _GCD.ask(rng, a=str(a), b=str(b)), steps, str(g), topic
    if kind == "lcm":
        a, b = _planted_pair(rng, 4)
        rows, g = euclid_rows(a, b)
        small, big = sorted((a, b))
        steps = [task(f"lcm({a}, {b})"), f"gcd by Euclid: {rows}, so gcd = {g}."]
        if g == small:
            steps.append(f"{small} divides {big}, so the lcm is {big}.")
            value = big
        else:
            value = big // g * small
            more, product = product_lines(big // g, small)
            steps += [f"lcm = {big}/{g} * {small} = {big // g} * {small}."] + more[:-1] + [f"lcm = {value}."]
            check(product == value, "lcm product")
        check(value == math.lcm(a, b), "lcm")
        topic = "The least common multiple is a*b/gcd(a, b): divide one number by the gcd, then multiply."
        return _LCM.ask(rng, a=str(a), b=str(b)), steps, str(value), topic
    if kind == "prime":
        n = rng.choice(_SMALL_PRIMES[5:]) * rng.choice((1, 1, *_SMALL_PRIMES[:8])) if rng.random() < 0.5 else \
            rng.randint(11, 10 ** rng.randint(2, 4))
        steps, prime = _trial_division(n)
        template = rng.choice(_PRIME.templates)
        asks_composite = ("omposite" in template or "factor other" in template or "not prime" in template)
        steps = [task(f"is {n} {'composite' if asks_composite else 'prime'}?")] + steps
        topic = "A whole number above 1 is prime when no prime up to its square root divides it."
        return template.format(n=n), steps, yes_no(prime != asks_composite), topic
    b = rng.randint(2, 10 ** rng.randint(1, 2))
    a = b * rng.randint(1, 10 ** rng.randint(1, 5)) + (rng.randint(1, b - 1) if rng.random() < 0.5 else 0)
    rows, q, r = long_division_rows(a, b)
    steps = [task(f"does {b} divide {a}?"), f"Long division: {rows}.",
             f"Remainder {r}: " + ("it divides exactly." if r == 0 else "not exact.")]
    topic = "b divides a exactly when long division of a by b leaves remainder 0."
    return _DIVIDES.ask(rng, a=str(a), b=str(b)), steps, yes_no(r == 0), topic


# --- comparison and order ------------------------------------------------------------------------------------------

_BIGGER = Phrasebook((
    "Which is bigger, {a} or {b}?", "Which of {a} and {b} is larger?", "Pick the larger number: {a} or {b}.",
    "What is the greater of {a} and {b}?", "Of {a} and {b}, which is more?", "Give the maximum of {a} and {b}.",
    "max({a}, {b}) = ?", "Which number is greater: {b} or {a}?", "Find the larger of {b} and {a}.",
    "Which is the biggest value among {a} and {b}?", "Out of {a} and {b}, which is greatest?",
    "{a} or {b}: which is larger?", "Name the bigger of the two numbers {a} and {b}.",
    "Compare {a} and {b} and give the larger one.", "What is max({b}, {a})?", "Which has the higher value, {a} or {b}?",
    "Tell me which is larger, {b} or {a}.", "Choose the greater number from {a} and {b}.",
    "Between {a} and {b}, which one is bigger?", "State the larger of {a} and {b}.",
))
_SMALLER = Phrasebook(tuple(t.replace("bigger", "smaller").replace("larger", "smaller").replace("greater", "lesser")
                            .replace("more", "less").replace("maximum", "minimum").replace("max(", "min(")
                            .replace("biggest", "smallest").replace("greatest", "least").replace("higher", "lower")
                            for t in _BIGGER.templates))
_IS_BIGGER = Phrasebook((
    "Is {a} bigger than {b}?", "Is {a} > {b}?", "Is {a} greater than {b}?", "True or false: {a} > {b}.",
    "Is {a} larger than {b}?", "Does {a} exceed {b}?", "Is it true that {a} > {b}?", "Yes or no: is {a} more than {b}?",
    "Is {b} < {a}?", "Is {b} smaller than {a}?", "Is {b} less than {a}?", "True or false: {b} < {a}.",
    "Is {a} above {b} on the number line?", "Is {b} to the left of {a} on the number line?",
    "Is {a} - {b} positive?", "Is {b} below {a}?", "Check: {a} > {b}?", "Is the number {a} greater than {b}?",
    "Would {a} come after {b} counting upwards?", "Is {a} the larger of {a} and {b}?",
))
_SORT = Phrasebook((
    "Put {xs} in increasing order.", "Sort {xs} from smallest to largest.", "Arrange {xs} in ascending order.",
    "Order {xs} from least to greatest.", "List {xs} from the smallest up.", "Write {xs} in order, smallest first.",
    "Sort these numbers in increasing order: {xs}.", "Rank {xs} from lowest to highest.",
    "What is {xs} sorted in ascending order?", "Arrange from smallest to biggest: {xs}.",
    "Put these in order, least first: {xs}.", "Sort ascending: {xs}.", "Order the numbers {xs}, smallest first.",
    "Reorder {xs} so they increase.", "Give {xs} in increasing order.", "From smallest to largest, list {xs}.",
    "Sort {xs}.", "Write the numbers {xs} in ascending order.", "Put the values {xs} into increasing order.",
    "Line up {xs} from lowest to highest.",
))
_NEAREST = Phrasebook((
    "Which of {xs} is nearest to {v}?", "Which number in {xs} is closest to {v}?",
    "Find the value nearest {v} in {xs}.",
    "From {xs}, pick the one closest to {v}.", "Of the numbers {xs}, which lies nearest to {v}?",
    "What is the closest number to {v} among {xs}?", "Among {xs}, which is closest to {v}?",
    "Choose the number nearest to {v}: {xs}.", "Which value in the list {xs} is closest to {v}?",
    "Nearest to {v} out of {xs}?", "Find the closest number to {v} from {xs}.",
    "Which of these is closest to {v}: {xs}?",
    "Closest to {v}: which of {xs}?", "In the list {xs}, what number is nearest to {v}?",
    "Which of {xs} is the smallest distance from {v}?", "Give the element of {xs} nearest to {v}.",
    "Pick from {xs} the value closest to {v}.", "What number of {xs} is nearest {v}?",
    "Which among {xs} has the least distance to {v}?", "Which of {xs} is near {v}, nearest of all?",
))


def mixed_value(rng: random.Random, max_digits: int = 7) -> Fraction:
    """A number of the kind people compare: a whole number, a decimal or a simple fraction, either sign."""
    kind = rng.random()
    if kind < 0.2:
        q = rng.choice((3, 6, 7, 9, 11, 12))  # never a finite decimal, so it is shown as a fraction
        value = Fraction(rng.randint(1, 4 * q), q)
        return -value if rng.random() < 0.4 else value
    return sized(rng, max_digits=max_digits)


def _compare_line(a: Fraction, b: Fraction) -> str:
    """Why a and b are in the order they are: sign, then length or the first differing digit, or a cross-product."""
    if (a < 0) != (b < 0):
        neg, pos = (a, b) if a < 0 else (b, a)
        return f"{show(neg)} is negative and {show(pos)} is not, so {show(neg)} < {show(pos)}."
    lo, hi = sorted((a, b))
    if not places_ok(lo) or not places_ok(hi):
        return (f"Cross-multiply: {lo.numerator}*{hi.denominator} = {lo.numerator * hi.denominator} < "
                f"{hi.numerator}*{lo.denominator} = {hi.numerator * lo.denominator}, so {show(lo)} < {show(hi)}.")
    if a < 0:
        return f"Both negative: the one nearer zero is larger; |{show(hi)}| < |{show(lo)}|, so {show(lo)} < {show(hi)}."
    whole = (len(str(int(lo))), len(str(int(hi))))
    if whole[0] != whole[1]:
        return f"{show(hi)} has {whole[1]} digits before the point and {show(lo)} has {whole[0]}, so {show(lo)} < " \
               f"{show(hi)}."
    return f"Same length before the point; the first digit that differs from the left is larger in {show(hi)}, so " \
           f"{show(lo)} < {show(hi)}."


def comparison(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    kind = rng.choice(("which", "which", "is", "is", "sort", "nearest"))
    topic = ("To compare numbers, look at the signs first, then the number of digits before the point, then the "
             "first digit that differs; fractions compare by cross-multiplying.")
    if kind in ("which", "is"):
        a = mixed_value(rng)
        # Close pairs are the informative ones: often share the leading digits or the length.
        b = a + Fraction(rng.choice((1, -1)) * rng.randint(1, 99), 10 ** rng.randint(0, 3)) \
            if rng.random() < 0.5 else mixed_value(rng)
        if a == b:
            b = a + 1
        if kind == "is":
            steps = [task(f"is {show(a)} > {show(b)}?"), _compare_line(a, b)]
            return _IS_BIGGER.ask(rng, a=show(a, rng), b=show(b, rng)), steps, yes_no(a > b), topic
        want_big = rng.random() < 0.5
        steps = [task(f"{'max' if want_big else 'min'}({show(a)}, {show(b)})"), _compare_line(a, b)]
        book = _BIGGER if want_big else _SMALLER
        answer = max(a, b) if want_big else min(a, b)
        return book.ask(rng, a=show(a, rng), b=show(b, rng)), steps, show(answer), topic
    xs = []
    while len(xs) < rng.randint(3, 6):
        x = mixed_value(rng, max_digits=4)
        if x not in xs:
            xs.append(x)
    listed = ", ".join(show(x) for x in xs)
    if kind == "sort":
        order = sorted(xs)
        steps = [task(f"sort {listed} ascending"),
                 f"Negatives first, most negative first; then the rest by size: {', '.join(show(x) for x in order)}."]
        return _SORT.ask(rng, xs=listed), steps, ", ".join(show(x) for x in order), topic
    v = mixed_value(rng, max_digits=3)
    gaps = [abs(x - v) for x in xs]
    best = xs[gaps.index(min(gaps))]
    if gaps.count(min(gaps)) > 1:
        return comparison(rng, d)
    distances = "; ".join(f"|{show(x)} - {show(v)}| = {show(g)}" for x, g in zip(xs, gaps))
    steps = [task(f"nearest to {show(v)} of {listed}"), f"Distances: {distances}.",
             f"The smallest distance is {show(min(gaps))}, from {show(best)}."]
    return _NEAREST.ask(rng, xs=listed, v=show(v)), steps, show(best), topic


# --- place value and rounding --------------------------------------------------------------------------------------

_ROUND = Phrasebook((
    "Round {x} to the nearest {place}.", "What is {x} rounded to the nearest {place}?", "Round {x} off to the {place}.",
    "Give {x} to the nearest {place}.", "{x} to the nearest {place} is what?",
    "Approximate {x} to the nearest {place}.",
    "Round off {x} to the nearest {place}.", "What do you get rounding {x} to the nearest {place}?",
    "Write {x} rounded to the {place}.", "Round the number {x} to the {place}.", "To the nearest {place}, what is {x}?",
    "Estimate {x} to the nearest {place}.", "Rounded to the nearest {place}, {x} is what?",
    "If you round {x} to the {place}, what do you get?", "Nearest {place} to {x}?",
    "Round {x}; keep it to the nearest {place}.", "Express {x} to the nearest {place}.",
    "What is the nearest {place} value of {x}?", "Round {x} correct to the nearest {place}.",
    "Find {x} rounded to the nearest {place}.",
))
_ROUND_DP = Phrasebook((
    "Round {x} to {k} decimal places.", "What is {x} to {k} decimal places?", "Give {x} correct to {k} decimal places.",
    "Round {x} to {k} dp.", "Write {x} with {k} decimal places, rounded.",
    "Round off {x} to {k} places after the point.",
    "{x} rounded to {k} decimal places is what?", "Keep {k} decimal places of {x}, rounding.",
    "Approximate {x} to {k} decimal places.", "Express {x} to {k} decimal places.", "To {k} decimal places, {x} is?",
    "Round {x}, keeping {k} digits after the decimal point.", "What is {x} rounded to {k} decimals?",
    "Round the number {x} to {k} decimal places.", "Find {x} to {k} decimal places.",
    "Give {x} to {k} dp.", "Rounding to {k} decimal places, what is {x}?", "Correct {x} to {k} decimal places.",
    "Shorten {x} to {k} decimal places by rounding.", "How does {x} round to {k} decimal places?",
))
_DIGIT = Phrasebook((
    "What is the {place} digit of {x}?", "Which digit is in the {place} place of {x}?", "In {x}, what digit is in the "
    "{place} place?", "Give the {place} digit of {x}.", "Find the digit in the {place} place of {x}.",
    "What digit sits in the {place} position of {x}?", "Name the {place} digit in {x}.", "{x}: what is its {place} "
    "digit?", "Look at {x}. What is the {place} digit?", "Tell me the {place} digit of the number {x}.",
    "What is the digit in the {place} column of {x}?", "Which digit of {x} counts the {place}?",
    "In the number {x}, which digit is the {place} digit?", "Read off the {place} digit of {x}.",
    "What number is in the {place} place in {x}?", "Identify the {place} digit of {x}.",
    "State the {place} digit of {x}.", "What is the digit for the {place} in {x}?",
    "Which digit of {x} stands in the {place} place?", "Find the {place} digit in {x}.",
))


def place_value(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    x = sized(rng, max_digits=10, negative=0.2)
    kind = rng.choice(("round", "round", "digit"))
    top = len(str(int(abs(x)))) - 1
    if kind == "digit":
        k = rng.randint(-min(4, places(x)), min(6, top))
        digit = int(abs(x) / Fraction(10) ** k) % 10
        steps = [task(f"{PLACE_NAMES[k]} digit of {show(x)}"),
                 f"Counting from the point, the {PLACE_NAMES[k]} digit is {digit}."]
        topic = "Each place is worth ten times the place to its right: ones, tens, hundreds; tenths, hundredths."
        return _DIGIT.ask(rng, place=PLACE_NAMES[k], x=show(x)), steps, str(digit), topic
    topic = "To round, look at the digit just right of the last kept place: 5 or more rounds up, less rounds down."
    if x.denominator != 1 and rng.random() < 0.5:
        k = rng.randint(1, min(4, max(1, places(x) - 1)))
        steps, value = round_lines(x, -k)
        steps = [task(f"round {show(x)} to {k} decimal places")] + steps
        steps.append(f"So {show(x)} is about {fixed_places(value, k)}.")
        return _ROUND_DP.ask(rng, x=show(x), k=str(k)), steps, fixed_places(value, k), topic
    k = rng.randint(0, min(6, max(1, top)))
    if k == 0 and x.denominator == 1:
        k = 1
    steps, value = round_lines(x, k)
    steps = [task(f"round {show(x)} to the nearest {PLACE_NAMES[k].rstrip('s') if k else 'whole number'}")] + steps
    steps.append(f"So {show(x)} is about {dec(value)}.")
    return _ROUND.ask(rng, x=show(x), place=PLACE_NAMES[k].rstrip("s") if k else "whole number"), steps, dec(value), \
        topic


def fixed_places(x: Fraction, k: int) -> str:
    """x written with exactly k decimals (a rounded value keeps its trailing zeros: 0.130 to 3 places)."""
    whole = round(abs(x) * 10 ** k)
    return ("-" if x < 0 else "") + f"{whole // 10 ** k}.{whole % 10 ** k:0{k}d}"


# --- number bases --------------------------------------------------------------------------------------------------

_TO_BASE = Phrasebook((
    "Write {n} in base {b}.", "Convert {n} to base {b}.", "What is {n} in base {b}?", "Express {n} in base {b}.",
    "Change {n} (base 10) into base {b}.", "How is {n} written in base {b}?", "Give the base-{b} form of {n}.",
    "Turn the decimal number {n} into base {b}.", "What are the base {b} digits of {n}?", "Rewrite {n} in base {b}.",
    "{n} in base {b} is what?", "Convert the number {n} from base 10 to base {b}.", "Represent {n} in base {b}.",
    "Find the base-{b} representation of {n}.", "What does {n} look like in base {b}?", "Base {b} of {n}?",
    "Write the number {n} using base {b}.", "Change {n} to base {b}.", "Show {n} in base {b}.",
    "What is the base {b} numeral for {n}?",
))
_FROM_BASE = Phrasebook((
    "Convert {s} from base {b} to base 10.", "What is the base {b} number {s} in decimal?", "Write {s} (base {b}) in "
    "base 10.", "{s} is written in base {b}. What is it in base 10?", "Change {s}_{b} to decimal.",
    "Express the base-{b} number {s} in base 10.", "What decimal number is {s} in base {b}?", "Turn {s} (base {b}) "
    "into an ordinary number.", "Find the value of {s} in base {b} as a decimal.", "Base {b} number {s}: its value?",
    "Convert {s}_{b} to base 10.", "What is {s}_{b} in base ten?", "Rewrite the base {b} numeral {s} in base 10.",
    "How much is {s} when read in base {b}?", "Give the base-10 value of {s}_{b}.",
    "Read {s} as base {b}: what number?",
    "The numeral {s} is in base {b}; write it in base 10.", "Decimal value of {s} (base {b})?",
    "What is {s} base {b} in decimal?", "Convert the base-{b} number {s} into base 10.",
))
_DIGITS = "0123456789abcdef"


def number_bases(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    b = rng.choice((2, 2, 3, 4, 5, 6, 7, 8, 9, 16))
    n = rng.randint(2, 10 ** rng.randint(1, 4))
    digits, m, rows = [], n, []
    while m:
        m, r = divmod(m, b)
        rows.append(f"{m * b + r}/{b}={m} r{_DIGITS[r]}")
        digits.append(_DIGITS[r])
    s = "".join(reversed(digits))
    check(int(s, b) == n, "base conversion")
    topic = ("A number in base b: divide by b again and again, the remainders are its digits from the right; back "
             "to base 10, add each digit times its power of b.")
    if rng.random() < 0.5:
        steps = [task(f"{n} in base {b}"), f"Divide by {b}: {'; '.join(rows)}.", f"Remainders from the last: {s}."]
        return _TO_BASE.ask(rng, n=str(n), b=str(b)), steps, s, topic
    terms = [f"{c}*{b}^{i}" for i, c in zip(reversed(range(len(s))), s)]
    values = [int(c, b) * b ** i for i, c in zip(reversed(range(len(s))), s)]
    steps = [task(f"{s} from base {b} to base 10"), f"{' + '.join(terms)} = {' + '.join(map(str, values))} = {n}."]
    return _FROM_BASE.ask(rng, s=s, b=str(b)), steps, str(n), topic
