"""Number-sense domains: decimals and percentages, counting, and elementary probability.

Answers are recomputed independently of the worked steps: decimals with the `decimal` module, counts with sympy's
combinatorial functions or by listing every arrangement, probabilities by enumerating the whole sample space.
"""

from __future__ import annotations

import itertools
import math
import random
from decimal import Decimal
from fractions import Fraction
from typing import Callable

from phiforge.data.domains.common import check, dec, fixed, lowest_terms, product_steps

_PLACES = {0: "ones", 1: "tenths", 2: "hundredths", 3: "thousandths", 4: "ten-thousandths"}


def _decimal(rng: random.Random, places: int, hi: int) -> int:
    """The digits of a number with exactly `places` decimals (no trailing zero), below `hi`."""
    while True:
        n = rng.randint(2, hi * 10 ** places - 1)
        if places == 0 or n % 10:
            return n


# --- decimals and percentages -----------------------------------------------------------------

def decimals_percentages(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    kind = rng.choice(("add", "sub", "mul", "percent_of", "percent_change"))
    maxp = min(d + 1, 4)
    if kind in ("add", "sub"):
        p1, p2 = rng.randint(1, maxp), rng.randint(1, maxp)
        n1, n2 = _decimal(rng, p1, 10 * d + 10), _decimal(rng, p2, 10 * d + 10)
        a, b = fixed(n1, p1), fixed(n2, p2)
        k = max(p1, p2)
        A, B = n1 * 10 ** (k - p1), n2 * 10 ** (k - p2)
        if kind == "sub" and A < B:
            (a, A), (b, B) = (b, B), (a, A)
        op, R = ("+", A + B) if kind == "add" else ("-", A - B)
        answer = dec(Fraction(R, 10 ** k))
        back = fixed(R, k)
        places = f"{k} decimal place{'s' if k > 1 else ''}"
        steps = [f"Write both numbers with {places}: {fixed(A, k)} {op} {fixed(B, k)}.",
                 f"Work in {_PLACES[k]}: {A} {op} {B} = {R}.",
                 f"Put the decimal point back {places} from the right: {back}"
                 + (f" = {answer}." if back != answer else ".")]
        exact = Decimal(a) + Decimal(b) if op == "+" else Decimal(a) - Decimal(b)
        check(exact == Decimal(answer), "decimal sum")
        topic = ("To add or subtract decimals, give both numbers the same number of decimal places, work with "
                 "the digits as whole numbers, then put the decimal point back.")
        return f"What is {a} {op} {b}?", steps, answer, topic
    if kind == "mul":
        p1, p2 = rng.randint(1, maxp - 1 if maxp > 1 else 1), rng.randint(0, 1 if d == 1 else maxp - 1)
        n1, n2 = _decimal(rng, p1, 10 * d), _decimal(rng, p2, 2 + 3 * d)
        a, b = fixed(n1, p1), fixed(n2, p2)
        R, k = n1 * n2, p1 + p2
        answer = dec(Fraction(R, 10 ** k))
        back = fixed(R, k)
        steps = [f"Multiply without the decimal points: {n1} * {n2} = {R}.",
                 f"The factors have {p1} + {p2} = {k} decimal place{'s' if k > 1 else ''}, so the product is {back}"
                 + (f" = {answer}." if back != answer else ".")]
        check(Decimal(a) * Decimal(b) == Decimal(answer), "decimal product")
        topic = ("To multiply decimals, multiply the digits as whole numbers, then give the product as many "
                 "decimal places as the two factors have together.")
        return f"What is {a} * {b}?", steps, answer, topic
    if kind == "percent_of":
        p = rng.randint(1, 19) * 5 if d == 1 else rng.randint(1, 100 * d)
        base = rng.randint(1, 20) * 10 if d == 1 else rng.randint(2, 100 * d)
        answer = dec(Fraction(p * base, 100))
        steps = [f"{p}% means {p}/100.", f"{p}/100 * {base} = {p * base}/100 = {answer}."]
        check(Decimal(p) / 100 * Decimal(base) == Decimal(answer), "percent of")
        topic = "P percent of a number is P/100 times the number, because percent means out of one hundred."
        return f"What is {p}% of {base}?", steps, answer, topic
    p = rng.randint(1, 12) * 5 if d == 1 else rng.randint(1, 40 * d)
    up = rng.random() < 0.5 or p >= 100
    old = 100 // math.gcd(p, 100) * rng.randint(1, 3 * d)  # makes old * p / 100 a whole number
    change = old * p // 100
    new = old + change if up else old - change
    word = "increase" if up else "decrease"
    ratio = dec(Fraction(change, old))
    steps = [f"The change is {new} - {old} = {change}." if up else f"The change is {old} - {new} = {change}.",
             f"Divide by the original value: {change} / {old} = {ratio}.",
             f"Multiply by 100: {ratio} * 100 = {p}, so the percent {word} is {p}%."]
    check((Decimal(abs(new - old)) / Decimal(old) * 100) == p, "percent change")
    topic = ("The percent change is the change divided by the original value, times 100; it is an increase when "
             "the new value is larger and a decrease when it is smaller.")
    verb = "rises" if up else "falls"
    return f"A price {verb} from {old} to {new}. What is the percent {word}?", steps, f"{p}%", topic


# --- combinatorics ----------------------------------------------------------------------------

_MENUS = (("shirts", "pairs of trousers", "hats"), ("starters", "main courses", "desserts"),
          ("colours", "sizes", "patterns"), ("breads", "fillings", "sauces"))
_LETTERS = "ABCDE"
# Several wordings of each count, so the question text alone does not pin down the handful of small cases.
_ARRANGE = ("In how many ways can {n} different books be arranged in a row?",
            "In how many different orders can {n} people stand in a line?",
            "In how many ways can {n} different photos be hung in a row on a wall?",
            "In how many orders can {n} runners finish a race if there are no ties?")
_ORDERED = ("In how many ways can {n} runners take the first {k} places in a race?",
            "How many {k}-letter codes can be made from {n} different letters if no letter is used twice?",
            "In how many ways can {k} of {n} different books be placed in order on a shelf?")
_CHOOSE = ("In how many ways can a team of {k} be chosen from {n} students?",
           "In how many ways can {k} toppings be chosen from {n} different toppings?",
           "How many committees of {k} people can be formed from {n} club members?")


def combinatorics(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    import sympy

    kinds = ("arrange", "permutations", "combinations", "product") + (("letters",) if d >= 2 else ())
    kind = rng.choice(kinds)
    if kind == "arrange":
        n = rng.randint(3, 4 + d)
        text, value = product_steps(list(range(n, 1, -1)))
        steps = [f"There are {n} choices for the first place, {n - 1} for the second, and so on, "
                 f"so the count is {n}! = {' * '.join(str(i) for i in range(n, 0, -1))}.", f"{text}."]
        check(value == sympy.factorial(n), "factorial")
        topic = "The number of ways to arrange n different objects in a row is n! = n * (n - 1) * ... * 2 * 1."
        return rng.choice(_ARRANGE).format(n=n), steps, str(value), topic
    if kind == "permutations":
        n = rng.randint(4, 6 + 2 * d)
        k = rng.randint(2, min(2 + d, n - 1))
        factors = list(range(n, n - k, -1))
        text, value = product_steps(factors)
        steps = [f"The first position has {n} choices, the next {n - 1}, and so on for {k} positions, "
                 f"so the count is {' * '.join(map(str, factors))}.", f"{text}."]
        check(value == sympy.ff(n, k), "permutations")
        topic = ("When order matters, the number of ways to fill k places from n different objects is "
                 "n * (n - 1) * ... with k factors, which is n!/(n - k)!.")
        question = rng.choice(_ORDERED).format(n=n, k=k)
        return question, steps, str(value), topic
    if kind == "combinations":
        n = rng.randint(4, 6 + 2 * d)
        k = rng.randint(2, min(2 + d, n // 2))
        top_text, top = product_steps(list(range(n, n - k, -1)))
        bottom_text, bottom = product_steps(list(range(k, 0, -1)))
        value = top // bottom
        steps = [f"Order does not matter, so the count is C({n}, {k}) = "
                 f"({' * '.join(str(i) for i in range(n, n - k, -1))}) / {k}!.",
                 f"The top is {top_text}.", f"{k}! = {bottom_text}.", f"C({n}, {k}) = {top} / {bottom} = {value}."]
        check(value == sympy.binomial(n, k) and top % bottom == 0, "combinations")
        topic = ("When order does not matter, the number of ways to choose k objects from n is "
                 "C(n, k) = n * (n - 1) * ... (k factors) divided by k!.")
        return rng.choice(_CHOOSE).format(n=n, k=k), steps, str(value), topic
    if kind == "product":
        names = rng.choice(_MENUS)[:rng.randint(2, 3)]
        counts = [rng.randint(2, 5 + 2 * d) for _ in names]
        text, value = product_steps(counts)
        *head, tail = [f"{c} {name}" for c, name in zip(counts, names)]
        listed = f"{', '.join(head)} and {tail}"
        steps = [f"Each choice can go with every other choice, so multiply the numbers of choices: {text}."]
        check(value == sum(1 for _ in itertools.product(*(range(c) for c in counts))), "multiplication principle")
        topic = ("The multiplication principle: if one choice can be made in m ways and another in n ways, "
                 "the two together can be made in m * n ways.")
        question = f"There are {listed}. How many ways are there to pick one of each?"
        return question, steps, str(value), topic
    n_kinds = rng.randint(2, 3)
    counts = [rng.randint(1, 3) for _ in range(n_kinds)]
    while sum(counts) > min(4 + d, 8) or max(counts) < 2:
        counts = [rng.randint(1, 3) for _ in range(n_kinds)]
    letters = [c for c, k in zip(_LETTERS, counts) for _ in range(k)]
    rng.shuffle(letters)
    word, n = "".join(letters), len(letters)
    repeated = [(c, k) for c, k in zip(_LETTERS, counts) if k > 1]
    top_text, top = product_steps(list(range(n, 1, -1)))
    facts = [math.factorial(k) for _, k in repeated]
    bottom_text, bottom = product_steps(facts)
    value = top // bottom
    said = " and ".join(f"{c} appears {k} times" for c, k in repeated)
    steps = [f"There are {n} letters, and {said}, so the count is {n}! / "
             f"({' * '.join(f'{k}!' for _, k in repeated)}).",
             f"{n}! = {top_text}.",
             f"{' * '.join(f'{k}!' for _, k in repeated)} = {bottom_text}." if len(facts) > 1
             else f"{repeated[0][1]}! = {bottom}.",
             f"{top} / {bottom} = {value}."]
    check(value == len(set(itertools.permutations(word))), "multiset arrangements")
    topic = ("To count the arrangements of letters with repeats, divide n! by k! for each letter that appears "
             "k times, since swapping equal letters gives the same arrangement.")
    return f"How many different arrangements of the letters {word} are there?", steps, str(value), topic


# --- probability ------------------------------------------------------------------------------

_COLOURS = ("red", "blue", "green", "yellow", "white", "black")
_ITEMS = ("marbles", "balls", "counters", "beads")


def _p(num: int, den: int) -> tuple[list[str], str]:
    sentence, answer = lowest_terms(num, den)
    return [f"P = {num}/{den}.", sentence], answer


def _die_event(rng: random.Random, sides: int) -> tuple[str, Callable[[int], bool]]:
    # Every event keeps at least one outcome in and one out, so no answer is 0 or 1.
    k = rng.randint(1, sides - 1)
    m = rng.randint(3, max(3, sides // 2))
    return rng.choice((
        (f"a number greater than {k}", lambda v: v > k),
        (f"a number at most {k}", lambda v: v <= k),
        (f"a number less than {k + 1}", lambda v: v < k + 1),
        (f"a number at least {k + 1}", lambda v: v >= k + 1),
        ("an even number", lambda v: v % 2 == 0),
        ("an odd number", lambda v: v % 2 == 1),
        (f"a multiple of {m}", lambda v: v % m == 0),
    ))


def _dice_event(rng: random.Random) -> tuple[str, str, Callable[[int, int], bool]]:
    """(question phrase, step phrase, test) for two dice; the target is read off a real roll so it can happen."""
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    kind = rng.choice(("sum", "sum", "product", "difference"))
    if kind == "sum":
        return f"the sum is {a + b}", f"with sum {a + b}", lambda x, y: x + y == a + b
    if kind == "product":
        return f"the product is {a * b}", f"with product {a * b}", lambda x, y: x * y == a * b
    if a == b:
        return "both dice show the same number", "showing the same number", lambda x, y: x == y
    gap = abs(a - b)
    return f"the two numbers differ by {gap}", f"that differ by {gap}", lambda x, y: abs(x - y) == gap


def probability(rng: random.Random, d: int) -> tuple[str, list[str], str, str]:
    kind = rng.choice(("die", "two_dice", "coins", "urn") + (("urn_two",) if d >= 2 else ()))
    uniform = ("Probability of an event with equally likely outcomes = favourable outcomes / all outcomes, "
               "written as a fraction in lowest terms.")
    if kind == "die":
        sides = rng.choice((4, 6, 8, 10, 12) + ((20,) if d >= 2 else ()))
        phrase, test = _die_event(rng, sides)
        good = [v for v in range(1, sides + 1) if test(v)]
        last, answer = _p(len(good), sides)
        steps = [f"There are {sides} equally likely outcomes.",
                 f"The favourable outcomes are {', '.join(map(str, good))}: {len(good)} outcomes.", *last]
        check(Fraction(answer) == Fraction(sum(map(test, range(1, sides + 1))), sides) and 0 < len(good) < sides,
              "die")
        return (f"A fair {sides}-sided die numbered 1 to {sides} is rolled. What is the probability of rolling "
                f"{phrase}?", steps, answer, uniform)
    if kind == "two_dice":
        phrase, step_phrase, test = _dice_event(rng)
        pairs = [(a, b) for a in range(1, 7) for b in range(1, 7) if test(a, b)]
        shown = ", ".join(f"({a}, {b})" for a, b in pairs)
        last, answer = _p(len(pairs), 36)
        steps = ["There are 6 * 6 = 36 equally likely outcomes.",
                 f"The pairs {step_phrase} are {shown}: {len(pairs)} outcomes.", *last]
        space = list(itertools.product(range(1, 7), repeat=2))
        check(Fraction(answer) == Fraction(sum(test(a, b) for a, b in space), len(space)), "two dice")
        return f"Two fair six-sided dice are rolled. What is the probability that {phrase}?", steps, answer, uniform
    if kind == "coins":
        n = rng.randint(2, min(3 + 2 * d, 12))
        k = rng.randint(0, n)
        face = rng.choice(("heads", "tails"))
        k_ = min(k, n - k)  # C(n, k) == C(n, n - k): the shorter product is the one to write out
        top_text, top = product_steps(list(range(n, n - k_, -1))) if k_ else ("1", 1)
        bottom_text, bottom = product_steps(list(range(k_, 0, -1))) if k_ else ("1", 1)
        ways = top // bottom
        choose = (f"C({n}, {k}) = 1" if k_ == 0 else
                  f"C({n}, {k}) = ({' * '.join(str(i) for i in range(n, n - k_, -1))}) / "
                  f"({' * '.join(str(i) for i in range(k_, 0, -1))}) = {top} / {bottom} = {ways}")
        last, answer = _p(ways, 2 ** n)
        steps = [f"There are 2^{n} = {2 ** n} equally likely outcomes.",
                 f"The number of outcomes with exactly {k} {face} is {choose}.", *last]
        space = list(itertools.product("HT", repeat=n))
        check(Fraction(answer) == Fraction(sum(s.count(face[0].upper()) == k for s in space), len(space)), "coins")
        return (f"A fair coin is flipped {n} times. What is the probability of getting exactly {k} {face}?",
                steps, answer, uniform)
    colours = rng.sample(_COLOURS, rng.randint(2, 3))
    counts = [rng.randint(1, 3 + 2 * d) for _ in colours]
    item = rng.choice(_ITEMS)
    target = rng.randrange(len(colours))
    want, have = colours[target], counts[target] + (1 if kind == "urn_two" and counts[target] == 1 else 0)
    counts[target] = have
    total = sum(counts)
    balls = [c for c, k in zip(colours, counts) for _ in range(k)]
    *head, tail = [f"{k} {c}" for c, k in zip(colours, counts)]
    holds = f"A bag holds {', '.join(head)} and {tail} {item}."
    if kind == "urn":
        last, answer = _p(have, total)
        steps = [f"There are {' + '.join(map(str, counts))} = {total} {item}, and {have} of them are {want}.", *last]
        check(Fraction(answer) == Fraction(balls.count(want), len(balls)), "urn")
        return (f"{holds} One is drawn at random. What is the probability that it is {want}?", steps, answer,
                uniform)
    num, den = have * (have - 1), total * (total - 1)
    sentence, answer = lowest_terms(num, den)
    steps = [f"There are {' + '.join(map(str, counts))} = {total} {item}, so the first is {want} with probability "
             f"{have}/{total}.",
             f"Then {have - 1} {want} {item} remain among {total - 1}, so the second is {want} with probability "
             f"{have - 1}/{total - 1}.",
             f"Multiply: {have}/{total} * {have - 1}/{total - 1} = {num}/{den}.", sentence]
    draws = list(itertools.permutations(range(total), 2))
    both = sum(balls[i] == balls[j] == want for i, j in draws)
    check(Fraction(answer) == Fraction(both, len(draws)), "two draws")
    topic = ("For two draws without replacement, multiply the probability of the first draw by the probability "
             "of the second given the first, since one item fewer remains.")
    return (f"{holds} Two are drawn at random without replacement. What is the probability that both are {want}?",
            steps, answer, topic)
