"""The paraphrase grammar of the school-maths curriculum: one question, many surface forms.

A fact seen in one phrasing is learnt as that phrasing (transfer-notes §4), so every curriculum generator asks its
question through a `Phrasebook`: a family of templates written here, not taken from any benchmark, whose slots are
filled by the generator. Structure varies, not only words: question or command, the operands named before or after
the verb, symbols or words for the operation, a framing clause or none. Notation varies too: the power sign (`^` or
`**`), the letter of the unknown, the function's name.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

# Letters a variable may take: every lower-case letter but the ones that read as words or digits ("a", "i", "l", "o").
LETTERS = tuple(c for c in string.ascii_lowercase if c not in "ailo")
FUNCTION_NAMES = tuple("fghkpqrstuvwz")


@dataclass(frozen=True)
class Phrasebook:
    """Templates for one problem type; `{name}` slots are filled by `ask`."""

    templates: tuple[str, ...]

    def ask(self, rng: random.Random, **slots: str) -> str:
        return rng.choice(self.templates).format(**slots)

    def __len__(self) -> int:
        return len(self.templates)


def task(canonical: str) -> str:
    """The first line of every curriculum solution: the question restated in one fixed notation ("Task: 7 * (-3).").
    Whatever the phrasing, the procedure that follows is conditioned on this line, so a new phrasing only has to be
    mapped onto the notation, not onto a procedure of its own."""
    return f"Task: {canonical}" + ("" if canonical.endswith("?") else ".")


def letter(rng: random.Random, avoid: str = "") -> str:
    return rng.choice([c for c in LETTERS if c not in avoid])


def function_name(rng: random.Random, avoid: str = "") -> str:
    return rng.choice([c for c in FUNCTION_NAMES if c not in avoid])


def power_sign(rng: random.Random) -> str:
    """`^` in two problems of three, Python's `**` in the rest: both are read everywhere, written by people."""
    return rng.choice(("^", "^", "**"))


# Shared openings of a "work this value out" request; a type adds its own around them.
VALUE_OF = Phrasebook((
    "What is {e}?", "Work out {e}.", "Compute {e}.", "Find the value of {e}.", "Evaluate {e}.",
    "Calculate {e}.", "{e} = ?", "How much is {e}?", "Give the value of {e}.", "Find {e}.",
    "What number is {e}?", "What do you get for {e}?", "Simplify {e} to a single number.",
    "Please work out {e}.", "Tell me what {e} equals.", "What does {e} come to?", "Determine the value of {e}.",
    "Reduce {e} to one number.", "Quick check: what is {e}?", "Find the result of {e}.",
    "Write {e} as a single number.", "{e}. What is the result?", "Compute the value of the expression {e}.",
))
