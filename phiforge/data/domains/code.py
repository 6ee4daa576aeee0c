"""The `python_code` domain: write-a-function exercises whose solution is code and whose check is unit tests.

The question is the specification, the worked steps explain the approach and end with the code in a fenced block,
and `Problem.tests` holds plain `assert` lines. Expected values in the tests come from an oracle written apart from
the reference code (a different construction of the same function), and the teacher runs the reference code
against them before a problem is emitted. Model-written code is only ever run through `phiforge.sandbox`.
"""

from __future__ import annotations

import collections
import itertools
import math
import random
import re
import string
from typing import Callable

from phiforge.data.domains.common import check
from phiforge.sandbox import run_tests

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def fenced(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def extract_code(text: str) -> str | None:
    """The last fenced code block in `text` (a model's answer or a rendered solution), or None."""
    blocks = _FENCE.findall(text or "")
    return blocks[-1] if blocks else None


def verify_code(problem, text: str, **limits) -> bool:
    """Whether the last code block in `text` passes `problem.tests`, run in the sandbox (code is untrusted)."""
    code = extract_code(text)
    if code is None or not problem.tests:
        return False
    return run_tests(code, problem.tests, **limits).status == "ok"


# --- templates ---------------------------------------------------------------------------------
# Each returns (signature, spec, explanation, code, oracle, inputs, topic); inputs are argument tuples.

_LOOP_TOPIC = ("A loop with an accumulator visits each item once and updates a running value; the function returns "
               "that value after the loop.")
_COND_TOPIC = "An if/elif/else chain tests the cases in order and returns the first one that applies."


def _text(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def _numbers(rng: random.Random, d: int, lo: int = 0, hi: int = 8) -> list[int]:
    return [rng.randint(-5 * d, 10 * d) for _ in range(rng.randint(lo, hi))]


def _sum_multiples(rng, d):
    k = rng.randint(2, 3 + 2 * d)
    code = (f"def sum_of_multiples(n):\n    total = 0\n    for i in range({k}, n, {k}):\n        total += i\n"
            f"    return total\n")
    return ("sum_of_multiples(n)", f"returns the sum of all positive multiples of {k} that are less than n",
            ["Start a running total at 0.", f"range({k}, n, {k}) visits {k}, {2 * k}, {3 * k}, ... up to but not "
             "including n; add each one to the total.", "Return the total."],
            code, lambda n: sum(i for i in range(1, n) if i % k == 0),
            [(rng.randint(k + 1, 20 * d * k),), (1,), (k,), (k + 1,), (rng.randint(2, 50 * d),)], _LOOP_TOPIC)


def _count_letter(rng, d):
    c = rng.choice("abcde")
    code = (f"def count_letter(s):\n    count = 0\n    for ch in s:\n        if ch == {c!r}:\n            count += 1\n"
            f"    return count\n")
    return ("count_letter(s)", f"returns how many times the letter {c!r} appears in the string s",
            ["Start a count at 0.", f"Loop over the characters of s and add 1 whenever a character equals {c!r}.",
             "Return the count."],
            code, lambda s: s.count(c), [(_text(rng, "abcde", 3, 6 + 3 * d),) for _ in range(4)] + [("",)],
            _LOOP_TOPIC)


def _scale_list(rng, d):
    k = rng.choice([-3, -2, 2, 3, 4, 5, 10][: 3 + d])
    return ("scale_list(xs)", f"returns a new list with every number in the list xs multiplied by {k}",
            [f"A list comprehension builds the new list in one pass: x * {k} for each x in xs.",
             "The input list is left unchanged because the comprehension creates a new list."],
            f"def scale_list(xs):\n    return [x * {k} for x in xs]\n", lambda xs: list(map(lambda x: k * x, xs)),
            [(_numbers(rng, d, 1),) for _ in range(4)] + [([],)], "A list comprehension [f(x) for x in xs] "
            "builds a new list by applying the same expression to every item.")


def _largest(rng, d):
    code = ("def largest(xs):\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n"
            "    return best\n")
    return ("largest(xs)", "returns the largest number in the non-empty list xs without using max",
            ["Keep the best value seen so far, starting with the first item.",
             "Loop over the remaining items and replace the best value whenever an item is bigger.",
             "Return the best value."],
            code, lambda xs: sorted(xs)[-1], [(_numbers(rng, d, 1),) for _ in range(4)] + [([-7, -3, -9],)],
            _LOOP_TOPIC)


def _sign_word(rng, d):
    code = ("def sign_word(n):\n    if n > 0:\n        return 'positive'\n    elif n < 0:\n        return 'negative'\n"
            "    else:\n        return 'zero'\n")
    return ("sign_word(n)", "returns 'positive', 'negative' or 'zero' according to the sign of the number n",
            ["Test n > 0 first and return 'positive'.", "Otherwise test n < 0 and return 'negative'.",
             "The only case left is n == 0, so return 'zero'."],
            code, lambda n: ["zero", "positive", "negative"][(n > 0) - (n < 0)],
            [(rng.randint(1, 100 * d),), (-rng.randint(1, 100 * d),), (0,)], _COND_TOPIC)


def _factorial(rng, d):
    code = ("def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n"
            "    return result\n")
    return ("factorial(n)", "returns n! = 1 * 2 * ... * n for a non-negative integer n, with factorial(0) == 1",
            ["Start the product at 1, which is also the answer for n = 0 and n = 1.",
             "Multiply it by every i from 2 to n with range(2, n + 1).", "Return the product."],
            code, math.factorial, [(rng.randint(2, 6 + 2 * d),), (0,), (1,), (rng.randint(3, 10),)], _LOOP_TOPIC)


def _reverse(rng, d):
    return ("reverse_string(s)", "returns the string s written backwards",
            ["A slice with step -1, s[::-1], reads the string from the last character to the first.",
             "Return that slice; an empty string stays empty."],
            "def reverse_string(s):\n    return s[::-1]\n", lambda s: "".join(reversed(s)),
            [(_text(rng, string.ascii_lowercase, 2, 6 + 2 * d),) for _ in range(3)] + [("",)],
            "Slicing s[start:stop:step] with a negative step walks a sequence backwards.")


def _digit_power_sum(rng, d):
    p = rng.randint(1, d)
    code = (f"def digit_power_sum(n):\n    total = 0\n    while n > 0:\n        total += (n % 10) ** {p}\n"
            f"        n //= 10\n    return total\n")
    return ("digit_power_sum(n)", f"returns the sum of the digits of the non-negative integer n, each raised to "
            f"the power {p}",
            ["n % 10 is the last digit and n // 10 drops it.", f"While n > 0, add (n % 10) ** {p} to a total and "
             "drop the last digit.", "Return the total; for n = 0 the loop never runs and the total is 0."],
            code, lambda n: sum(int(c) ** p for c in str(n)),
            [(rng.randint(10, 10 ** (d + 2)),) for _ in range(3)] + [(0,), (7,)],
            "The digits of n come off one at a time with n % 10 (the last digit) and n // 10 (the rest).")


def _count_vowels(rng, d):
    code = ("def count_vowels(s):\n    count = 0\n    for ch in s.lower():\n        if ch in 'aeiou':\n"
            "            count += 1\n    return count\n")
    return ("count_vowels(s)", "returns how many vowels (a, e, i, o, u, upper or lower case) the string s contains",
            ["Lower-case the string so 'A' and 'a' count the same.", "Loop over its characters and add 1 for each "
             "one found in 'aeiou'.", "Return the count."],
            code, lambda s: sum(1 for c in s if c in "aeiouAEIOU"),
            [(_text(rng, "aAbeEioxyzu ", 4, 8 + 3 * d),) for _ in range(4)] + [("",)], _LOOP_TOPIC)


def _keep_greater(rng, d):
    t = rng.randint(-5, 5 * d)
    return ("keep_greater(xs)", f"returns the numbers in the list xs that are greater than {t}, in their "
            "original order",
            [f"A list comprehension with a condition keeps only the items that pass: x for x in xs if x > {t}.",
             "The order is kept because the comprehension walks xs from left to right."],
            f"def keep_greater(xs):\n    return [x for x in xs if x > {t}]\n",
            lambda xs: list(filter(lambda x: x > t, xs)), [(_numbers(rng, d, 2, 10),) for _ in range(4)] + [([],)],
            "A list comprehension with an if clause, [x for x in xs if test(x)], filters a list.")


def _fizz_buzz(rng, d):
    a, b = rng.sample([2, 3, 4, 5, 7], 2)
    code = (f"def fizz_buzz(n):\n    if n % {a * b // math.gcd(a, b)} == 0:\n        return 'FizzBuzz'\n"
            f"    if n % {a} == 0:\n        return 'Fizz'\n    if n % {b} == 0:\n        return 'Buzz'\n"
            f"    return str(n)\n")
    lcm = a * b // math.gcd(a, b)
    return ("fizz_buzz(n)", f"returns 'Fizz' if n is divisible by {a}, 'Buzz' if n is divisible by {b}, "
            f"'FizzBuzz' if it is divisible by both, and otherwise n as a string",
            [f"Divisible by both {a} and {b} means divisible by lcm({a}, {b}) = {lcm}; test that case first, or "
             "the single tests would catch it.", f"Then test n % {a} and n % {b}.", "Otherwise return str(n)."],
            code, lambda n: ("Fizz" * (n % a == 0) + "Buzz" * (n % b == 0)) or str(n),
            [(lcm * rng.randint(1, 3),), (a,), (b,), (rng.randint(1, 50 * d),), (1,)], _COND_TOPIC)


def _running_sum(rng, d):
    code = ("def running_sum(xs):\n    result = []\n    total = 0\n    for x in xs:\n        total += x\n"
            "        result.append(total)\n    return result\n")
    return ("running_sum(xs)", "returns the list of running totals of xs: item i is xs[0] + xs[1] + ... + xs[i]",
            ["Keep a total starting at 0 and an empty result list.",
             "For each x, add it to the total and append the new total to the result.", "Return the result."],
            code, lambda xs: list(itertools.accumulate(xs)), [(_numbers(rng, d, 1),) for _ in range(4)] + [([],)],
            _LOOP_TOPIC)


def _gcd(rng, d):
    code = "def gcd(a, b):\n    while b != 0:\n        a, b = b, a % b\n    return a\n"
    pairs = [(g * rng.randint(1, 20 * d), g * rng.randint(1, 20 * d)) for g in (rng.randint(1, 12), 1, 6)]
    return ("gcd(a, b)", "returns the greatest common divisor of two positive integers a and b using the "
            "Euclidean algorithm",
            ["Euclid: gcd(a, b) == gcd(b, a % b), and gcd(a, 0) == a.",
             "Replace (a, b) by (b, a % b) while b != 0.", "When b reaches 0, a is the gcd."],
            code, math.gcd, pairs + [(7, 7), (1, 9)],
            "The Euclidean algorithm replaces (a, b) by (b, a % b) until b is 0; then a is the gcd.")


def _is_prime(rng, d):
    code = ("def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n"
            "        if n % i == 0:\n            return False\n        i += 1\n    return True\n")
    return ("is_prime(n)", "returns True if the integer n is prime and False otherwise",
            ["Numbers below 2 are not prime.", "A composite n has a divisor i with i * i <= n, so trying those "
             "divisors is enough.", "If none divides n, return True."],
            code, lambda n: n >= 2 and all(n % k for k in range(2, n)),
            [(rng.randint(2, 100 * d),) for _ in range(3)] + [(1,), (2,), (97,), (91,)],
            "To test whether n is prime it is enough to try divisors up to the square root of n.")


def _second_largest(rng, d):
    code = "def second_largest(xs):\n    values = sorted(set(xs))\n    return values[-2]\n"

    def sample():
        xs = _numbers(rng, d, 2, 8)
        return (xs if len(set(xs)) >= 2 else xs + [max(xs) + 1],)
    return ("second_largest(xs)", "returns the second largest distinct value in the list xs, which has at least "
            "two distinct values",
            ["set(xs) removes repeated values, so the largest value is counted once.",
             "Sort the distinct values; the second largest is the item at index -2."],
            code, lambda xs: max(x for x in xs if x != max(xs)), [sample() for _ in range(4)] + [([5, 5, 3],)],
            "Converting a list to a set removes duplicates, and sorted() puts the values in increasing order.")


def _shift_letters(rng, d):
    k = rng.randint(1, 25)
    code = (f"def shift_letters(s):\n    out = []\n    for ch in s:\n        if 'a' <= ch <= 'z':\n"
            f"            ch = chr((ord(ch) - ord('a') + {k}) % 26 + ord('a'))\n        out.append(ch)\n"
            f"    return ''.join(out)\n")
    table = str.maketrans(string.ascii_lowercase, string.ascii_lowercase[k:] + string.ascii_lowercase[:k])
    return ("shift_letters(s)", f"shifts every lowercase letter of s forward by {k} places in the alphabet, "
            "wrapping from 'z' back to 'a', and leaves other characters unchanged",
            ["ord(ch) - ord('a') gives a letter's position 0 to 25.", f"Add {k}, take the result modulo 26 so it "
             "wraps around, and turn it back into a letter with chr.", "Copy every other character unchanged and "
             "join the pieces."],
            code, lambda s: s.translate(table),
            [(_text(rng, string.ascii_lowercase + " !", 3, 12),) for _ in range(4)] + [("xyz",)],
            "ord() turns a character into its code and chr() turns a code back into a character.")


def _run_length(rng, d):
    code = ("def run_length(s):\n    runs = []\n    for ch in s:\n        if runs and runs[-1][0] == ch:\n"
            "            runs[-1] = (ch, runs[-1][1] + 1)\n        else:\n            runs.append((ch, 1))\n"
            "    return runs\n")
    return ("run_length(s)", "returns the run-length encoding of s as a list of (character, count) tuples, "
            "one per run of equal characters",
            ["Walk the string keeping a list of runs.", "If a character equals the last run's character, increase "
             "that run's count; otherwise start a new run with count 1.", "Return the list of runs."],
            code, lambda s: [(c, len(list(g))) for c, g in itertools.groupby(s)],
            [(_text(rng, "aab", 4, 12),) for _ in range(4)] + [("",)],
            "Run-length encoding replaces each run of repeated characters by the character and its count.")


def _word_counts(rng, d):
    code = ("def word_counts(s):\n    counts = {}\n    for word in s.split():\n"
            "        counts[word] = counts.get(word, 0) + 1\n    return counts\n")
    words = ["cat", "dog", "sun", "red", "cup"]
    return ("word_counts(s)", "returns a dictionary mapping each word of the string s (split on whitespace) to "
            "the number of times it appears",
            ["s.split() breaks the string into words on any whitespace.",
             "counts.get(word, 0) + 1 adds one to the word's count, starting from 0 for a new word.",
             "Return the dictionary."],
            code, lambda s: dict(collections.Counter(s.split())),
            [(" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))),) for _ in range(4)] + [("",)],
            "A dictionary counts things: d.get(key, 0) + 1 increments a count that may not exist yet.")


# (first difficulty at which the template appears, template)
_TEMPLATES: tuple[tuple[int, Callable], ...] = (
    (1, _sum_multiples), (1, _count_letter), (1, _scale_list), (1, _largest), (1, _sign_word), (1, _factorial),
    (1, _reverse), (2, _digit_power_sum), (2, _count_vowels), (2, _keep_greater), (2, _fizz_buzz),
    (2, _running_sum), (2, _gcd), (2, _is_prime), (3, _second_largest), (3, _shift_letters), (3, _run_length),
    (3, _word_counts),
)


def _call(name: str, args: tuple) -> str:
    return f"{name}({', '.join(map(repr, args))})"


def python_code(rng: random.Random, d: int) -> tuple[str, list[str], str, str, str]:
    template = rng.choice([t for level, t in _TEMPLATES if level <= d])
    signature, spec, explanation, code, oracle, inputs, topic = template(rng, d)
    name = signature.split("(")[0]
    cases = [(args, oracle(*args)) for args in inputs]
    tests = "".join(f"assert {_call(name, args)} == {want!r}\n" for args, want in cases)
    # The reference code is the teacher's own, so it runs in-process here; only model code needs the sandbox.
    space: dict = {}
    exec(compile(code, f"<{name}>", "exec"), space)  # noqa: S102 - trusted, generated above
    check(all(space[name](*args) == want for args, want in cases), f"{name} reference code")
    exec(compile(tests, f"<{name} tests>", "exec"), space)  # noqa: S102 - asserts over trusted code
    (args, want), *_ = cases
    question = (f"Write a Python function `{signature}` that {spec}. For example, {_call(name, args)} should "
                f"return {want!r}.")
    return question, [*explanation, fenced(code)], name, topic, tests
