"""Seeds for the LLM workflows: real text and code that every machine with Python already has.

- passages: CPython's own reference documentation, shipped as `pydoc_data.topics` (the text `help("assert")`
  prints), cut into paragraph runs of a bounded length. Phi-4 seeds its rewrites with curated passages; the
  language reference is clean, factual and full of small deduction chains, which is what the workflows need.
- code: the programmatic teacher's `python_code` problems, whose reference function comes with unit tests written
  apart from it; instruction reversal needs exactly that pair.
- questions: the programmatic teacher's maths problems; their exact answers are *not* given to the workflow, only
  kept beside it so that a run can measure how often the plurality answer is right.

Selections are deterministic from (seed, n). The passages depend on the Python version (the documentation changes
between releases), so a seed records it.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from dataclasses import dataclass

from phiforge.data.domains.code import extract_code
from phiforge.data.problems import make_problem
from phiforge.errors import PhiforgeError

PYTHON_DOCS = f"python{sys.version_info.major}.{sys.version_info.minor}-docs"


@dataclass(frozen=True)
class Seed:
    id: str  # stable across runs: the source and the place in it
    source: str  # where it came from, e.g. "python3.11-docs" or "programmatic"
    domain: str
    text: str  # the passage, the reference code, or the question
    tests: str = ""  # code seeds: assert lines the reference passes
    name: str = ""  # code seeds: the function the tests call
    answer: str = ""  # question seeds: the exact answer, for measurement only; workflows never see it


def _rng(kind: str, seed: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"seeds|{kind}|{seed}".encode()).digest()[:8], "big"))


def doc_passages(min_chars: int = 300, max_chars: int = 1500) -> list[Seed]:
    """Every passage of the language reference, in topic order: consecutive paragraphs joined while they fit."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split the docs out of the standard library
        raise PhiforgeError("the standard library's pydoc_data.topics is missing (a Python built without its docs?); "
                            "it is the source of the workflows' passages") from None
    out = []
    for topic in sorted(topics):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", topics[topic]) if p.strip()]
        run: list[str] = []
        part = 0

        def flush():
            nonlocal part
            text = "\n\n".join(run)
            if len(text) >= min_chars:
                out.append(Seed(f"{PYTHON_DOCS}:{topic}:{part}", PYTHON_DOCS, f"python:{topic}", text))
                part += 1
            run.clear()

        for p in paragraphs:
            if len(p) > max_chars:  # a long table or grammar listing: not a passage to reason about
                flush()
                continue
            if run and len("\n\n".join([*run, p])) > max_chars:
                flush()
            run.append(p)
        flush()
    return out


def passages(n: int, seed: int) -> list[Seed]:
    pool = doc_passages()
    if n > len(pool):
        raise PhiforgeError(f"asked for {n} passages; the documentation of this Python has {len(pool)}")
    return _rng("passages", seed).sample(pool, n)


def code_seeds(n: int, seed: int, difficulty: int = 1) -> list[Seed]:

    out = []
    for i in range(n):
        p = make_problem("python_code", seed, 1_000_000 + i, difficulty)  # far from the synth stage's indices
        out.append(Seed(p.id, "programmatic", p.domain, extract_code(p.steps[-1]) or "", tests=p.tests, name=p.answer))
    return out


def question_seeds(n: int, seed: int, domains: list[str], difficulty: int = 1) -> list[Seed]:
    rng = _rng("questions", seed)
    out = []
    for i in range(n):
        p = make_problem(rng.choice(sorted(domains)), seed, 2_000_000 + i, difficulty)
        out.append(Seed(p.id, "programmatic", p.domain, p.question, answer=p.answer))
    return out
