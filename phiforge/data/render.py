"""Text renderings of a Problem: textbook passages and exercises for pretraining, chat turns for SFT.

Every rendering embeds the same `solution_text`, so the model sees one solution format whatever the
style, and evaluation can prompt a base model with `exercise_prompt` (or, for a model pretrained on answer-only
Q&A, with `question_prompt(q, "qa")`) and score what follows it.
The styles beyond that shared format each drop or reshape one part of it: `answer_only` keeps no
reasoning (like Q&A found on the web), `fill_in_the_middle` asks for one missing step, `tutoring_dialogue`
splits the solution across turns, and `code_pair` gives bare instruction/code pairs for code problems.
"""

from __future__ import annotations

import hashlib
import re

from phiforge.answers import answers_equal, extract_answer
from phiforge.data.domains.code import extract_code, verify_code
from phiforge.data.problems import Problem
from phiforge.errors import PhiforgeError

FIM_MARKER = "[missing step]"


def answer_line(problem: Problem) -> str:
    return f"The answer is \\boxed{{{problem.answer}}}."


def solution_text(problem: Problem) -> str:
    """Worked steps plus the final answer line, on one line: what a model should write after the prompt.
    A code problem's steps end in a fenced code block, which needs its own lines and replaces the answer line."""
    if problem.tests:
        *explanation, code = problem.steps
        return " ".join(explanation) + "\n" + code
    return " ".join([*problem.steps, answer_line(problem)])


def verify(problem: Problem) -> bool:
    """Maths: the rendered worked solution's extracted answer equals the problem's answer. Code: the solution passes
    the problem's unit tests, run in the sandbox."""
    if problem.tests:
        return verify_code(problem, solution_text(problem))
    return answers_equal(extract_answer(solution_text(problem)), problem.answer)


# A base model is asked a question framed the way its pretraining documents frame one: as a worked exercise
# (`completion`), or as answer-only Q&A (`qa`, for models that never saw worked solutions).
BASE_STYLES = ("completion", "qa")


def question_prompt(question: str, style: str) -> str:
    if style == "completion":
        return f"Exercise: {question}\nSolution:"
    if style == "qa":
        return f"Question: {question}\nAnswer:"
    raise PhiforgeError(f"base-model prompt style must be one of {BASE_STYLES}, got {style!r}")


_NEXT_QUESTION = re.compile(r"(?:Exercise(?: \d+)?|Question):")


def first_answer(text: str) -> str:
    """A base model trained on packed documents runs on into a next exercise ("Exercise:", or "Exercise 2:" after
    midtraining's numbered problem sets) or a next question; only its first answer counts."""
    return _NEXT_QUESTION.split(text, maxsplit=1)[0]


def exercise_prompt(problem: Problem) -> str:
    return question_prompt(problem.question, "completion")


def exercise(problem: Problem) -> str:
    # The single space joining prompt and solution belongs to neither, so that
    # exercise(p) == exercise_prompt(p) + " " + solution_text(p) holds exactly.
    return f"{exercise_prompt(problem)} {solution_text(problem)}"


def textbook(problem: Problem) -> str:
    return f"{problem.topic}\nExample: {problem.question}\nSolution: {solution_text(problem)}"


def chat(problem: Problem) -> list[dict]:
    return [
        {"role": "user", "content": problem.question},
        {"role": "assistant", "content": solution_text(problem)},
    ]


def _work_and_finish(problem: Problem) -> tuple[list[str], str]:
    """The explained steps, and what closes the solution: the answer line, or a code problem's code block."""
    if problem.tests:
        return problem.steps[:-1], problem.steps[-1]
    return list(problem.steps), answer_line(problem)


def answer_only(problem: Problem) -> str:
    if problem.tests:  # the code is the answer; it goes on its own lines so the fence stays valid markdown
        return f"Question: {problem.question}\nAnswer:\n{problem.steps[-1]}"
    return f"{question_prompt(problem.question, 'qa')} {problem.answer}"


def fill_in_the_middle(problem: Problem) -> dict:
    """exercise(problem) cut around one worked step: prefix + middle + suffix == exercise(problem).

    The step is picked by hashing the problem id, so it is fixed per problem yet spread over all positions."""
    work, _ = _work_and_finish(problem)
    i = int.from_bytes(hashlib.sha256(problem.id.encode()).digest()[:8], "big") % len(work)
    full = exercise(problem)
    prefix = f"{exercise_prompt(problem)} " + "".join(f"{step} " for step in work[:i])
    middle = work[i]
    if not full.startswith(prefix + middle):
        raise PhiforgeError(f"fill_in_the_middle: step {i} of {problem.id} is not where exercise() puts it")
    return {"prefix": prefix, "middle": middle, "suffix": full[len(prefix) + len(middle):]}


def fill_in_the_middle_text(problem: Problem) -> str:
    parts = fill_in_the_middle(problem)
    return f"{parts['prefix']}{FIM_MARKER}{parts['suffix']}\nMissing step: {parts['middle']}"


def tutoring_dialogue(problem: Problem) -> list[dict]:
    """Student asks, tutor hints with the first step, student proposes the next, tutor confirms and finishes."""
    work, finish = _work_and_finish(problem)
    turns = [
        {"role": "user", "content": f"Can you help me with this problem? {problem.question}"},
        {"role": "assistant", "content": f"Let's start with the first step. {work[0]} What is the next step?"},
    ]
    if len(work) > 1:
        proposal, rest = f"Is the next step this? {work[1]}", work[2:]
    else:
        proposal, rest = f"Is the answer {problem.answer}?", []
    separator = "\n" if problem.tests else " "
    confirm = " ".join(["Yes, that is right.", *rest]) + separator + finish
    return turns + [{"role": "user", "content": proposal}, {"role": "assistant", "content": confirm}]


def code_pair(problem: Problem) -> dict:
    """An instruction <-> code pair for a code problem: the specification and the bare code, no explanation."""
    code = extract_code(problem.steps[-1]) if problem.tests and problem.steps else None
    if code is None:
        raise PhiforgeError(f"code_pair needs a code problem (domain python_code), got {problem.domain!r}")
    return {"instruction": problem.question, "code": code}


# Pretraining text styles (Problem -> str); chat styles give message lists for SFT.
STYLES = {"textbook": textbook, "exercise": exercise, "answer_only": answer_only,
          "fill_in_the_middle": fill_in_the_middle_text}
CHAT_STYLES = {"chat": chat, "tutoring": tutoring_dialogue}
