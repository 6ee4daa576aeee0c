"""Judges for judge-guided DPO (Phi-4 §4.2, App. A.2): each response to a prompt gets a list of faults and 1-5 scores
for accuracy, style and detail; of two responses the chosen one has the higher accuracy, or on a tie the higher mean
of the three, and equal responses make no pair.

    class Judge(Protocol):
        name: str
        def score(self, tasks: list[JudgeTask]) -> list[Scores | None]: ...   # None: the judge gave no usable verdict

- `ProgrammaticJudge`: for verifiable maths, accuracy from the exact answer check and style/detail from what can be
  measured in the text (it finished, it states its answer, it does not repeat itself, it shows its steps).
- `LLMJudge`: any chat `Teacher` (an HTTP server, a local checkpoint) asked with the paper's rubric for a JSON verdict;
  a reply that is not one is counted and left unscored rather than guessed at.
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from phiforge.answers import answers_equal, extract_answer
from phiforge.errors import PhiforgeError
from phiforge.lm.completions import ChatRequest

AXES = ("accuracy", "style", "detail")


@dataclass(frozen=True)
class JudgeTask:
    prompt: str
    response: str
    reference: str = ""  # a reference solution, where the task has one
    answer: str | None = None  # the exact final answer, for verifiable tasks
    finished: bool = True  # False when the response hit its token budget


@dataclass(frozen=True)
class Scores:
    accuracy: int
    style: int
    detail: int
    faults: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for axis in AXES:
            v = getattr(self, axis)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5:
                raise PhiforgeError(f"judge score '{axis}' must be an integer from 1 to 5, got {v!r}")

    @property
    def overall(self) -> float:
        return (self.accuracy + self.style + self.detail) / 3

    def to_dict(self) -> dict:
        return {**asdict(self), "faults": list(self.faults), "overall": round(self.overall, 4)}


class Judge(Protocol):
    name: str

    def score(self, tasks: Sequence[JudgeTask]) -> list[Scores | None]: ...


def prefer(a: Scores, b: Scores) -> int:
    """+1 if a should be chosen over b, -1 if b over a, 0 if the judge cannot tell them apart."""
    if a.accuracy != b.accuracy:
        return 1 if a.accuracy > b.accuracy else -1
    if a.overall != b.overall:
        return 1 if a.overall > b.overall else -1
    return 0


def preference_pairs(scores: Sequence[Scores | None]) -> list[tuple[int, int]]:
    """(chosen, rejected) indices over every combination of scored responses to one prompt, ties left out."""
    pairs = []
    for i, j in itertools.combinations(range(len(scores)), 2):
        if scores[i] is None or scores[j] is None:
            continue
        p = prefer(scores[i], scores[j])
        if p:
            pairs.append((i, j) if p > 0 else (j, i))
    return pairs


# An answer the reader can find: "the answer is ...", \boxed{...} or "#### ..." (a last number alone does not count).
_STATED = re.compile(r"answer is|\\boxed\{|####", re.IGNORECASE)


def _steps(text: str) -> int:
    return sum(1 for line in text.splitlines() if re.search(r"[0-9=]", line))


def _repetition(text: str) -> float:
    """How much shorter the text gets under compression: near 0 for prose, toward 1 for a loop of one phrase."""
    raw = text.encode("utf-8")
    return 0.0 if len(raw) < 64 else 1.0 - len(zlib.compress(raw, 9)) / len(raw)


class ProgrammaticJudge:
    """The rubric, measured: accuracy 5 when the final answer (stated, or else the last number) equals the exact one,
    1 otherwise; style 5 less a point for each of: unfinished, no stated final answer, heavy repetition (two points);
    detail from the worked steps shown against the reference solution's."""

    name = "programmatic"

    def __init__(self, repetition_threshold: float = 0.75):
        self.repetition_threshold = repetition_threshold

    def score(self, tasks: Sequence[JudgeTask]) -> list[Scores | None]:
        return [self._one(t) for t in tasks]

    def _one(self, t: JudgeTask) -> Scores:
        if t.answer is None:
            raise PhiforgeError("the programmatic judge needs each task's exact answer; use an LLM judge for "
                                "open-ended prompts")
        faults = []
        stated = extract_answer(t.response)
        correct = answers_equal(stated, t.answer)
        if not correct:
            faults.append("no final answer" if stated is None else f"final answer {stated!r} is wrong")
        style = 5
        if not t.finished:
            style -= 1
            faults.append("ran out of tokens")
        if not _STATED.search(t.response):
            style -= 1
            faults.append("does not state its final answer")
        if _repetition(t.response) > self.repetition_threshold:
            style -= 2
            faults.append("repeats itself")
        shown, wanted = _steps(t.response), max(_steps(t.reference), 1)
        ratio = shown / wanted
        detail = 1 if shown == 0 else 5 if 0.75 <= ratio <= 1.5 else 4 if 0.5 <= ratio <= 2 else 3 \
            if 0.25 <= ratio <= 3 else 2
        if detail < 4:
            faults.append(f"shows {shown} worked lines where {wanted} are expected")
        return Scores(5 if correct else 1, max(style, 1), detail, tuple(faults))


RUBRIC = """You are grading one assistant response. Read the user's request, the reference solution if one is given,
and the response. List the response's faults, then score it from 1 (poor) to 5 (excellent) on:
- accuracy: is every claim and the final answer correct?
- style: is it clear, well organised and finished?
- detail: does it show the reasoning the request needs? Do not penalise the level of detail unless the request
  asked for one.
Reply with one JSON object and nothing else:
{"faults": ["..."], "accuracy": 1-5, "style": 1-5, "detail": 1-5}"""


def parse_verdict(text: str) -> Scores | None:
    """The first JSON object in a judge's reply as Scores; None when there is no valid one."""
    start = text.find("{")
    while start >= 0:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if not isinstance(obj, dict):
            return None
        faults = obj.get("faults", [])
        try:
            return Scores(*(obj.get(axis) for axis in AXES),
                          faults=tuple(str(f) for f in faults) if isinstance(faults, list) else ())
        except PhiforgeError:
            return None
    return None


class LLMJudge:
    """A chat teacher grading with `RUBRIC`, greedily (so an HTTP teacher's cache makes a rerun free)."""

    def __init__(self, teacher, max_tokens: int = 256):
        self.teacher, self.max_tokens = teacher, max_tokens
        self.name = f"llm:{teacher.name}"
        self.unparsed = 0

    def score(self, tasks: Sequence[JudgeTask]) -> list[Scores | None]:
        requests = []
        for t in tasks:
            parts = [f"## Request\n{t.prompt}"]
            if t.reference:
                parts.append(f"## Reference solution\n{t.reference}")
            parts.append(f"## Response\n{t.response}")
            requests.append(ChatRequest([{"role": "system", "content": RUBRIC},
                                         {"role": "user", "content": "\n\n".join(parts)}],
                                        temperature=0.0, max_tokens=self.max_tokens))
        verdicts = [parse_verdict(c.text) for c in self.teacher.complete(requests)]
        self.unparsed += sum(v is None for v in verdicts)
        return verdicts
