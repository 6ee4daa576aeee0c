"""Text renderings of a Problem: textbook passages and exercises for pretraining, chat turns for SFT.

Every rendering embeds the same `solution_text`, so the model sees one solution format whatever the
style, and evaluation can prompt a base model with `exercise_prompt` and score what follows it.
"""

from __future__ import annotations

from phiforge.problems import Problem


def answer_line(problem: Problem) -> str:
    return f"The answer is \\boxed{{{problem.answer}}}."


def solution_text(problem: Problem) -> str:
    """Worked steps plus the final answer line, on one line: what a model should write after the prompt."""
    return " ".join([*problem.steps, answer_line(problem)])


def exercise_prompt(problem: Problem) -> str:
    return f"Exercise: {problem.question}\nSolution:"


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


STYLES = {"textbook": textbook, "exercise": exercise}
