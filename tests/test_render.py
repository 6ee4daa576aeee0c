import re

import pytest

from phiforge.answers import extract_answer
from phiforge.data.domains.code import extract_code
from phiforge.errors import PhiforgeError
from phiforge.data.problems import DOMAINS, make_problem
from phiforge.data.render import (CHAT_STYLES, FIM_MARKER, STYLES, answer_line, answer_only, chat, code_pair, exercise,
                             exercise_prompt, fill_in_the_middle, fill_in_the_middle_text, solution_text, textbook,
                             tutoring_dialogue)

# Enough problems per domain to meet every template and step count, few enough to stay fast.
SAMPLE = [make_problem(domain, 11, i, difficulty) for domain in DOMAINS for difficulty in (1, 3) for i in range(12)]


def _ids(problems):
    return [p.id for p in problems]


def test_style_registries():
    assert STYLES == {"textbook": textbook, "exercise": exercise, "answer_only": answer_only,
                      "fill_in_the_middle": fill_in_the_middle_text}
    assert CHAT_STYLES == {"chat": chat, "tutoring": tutoring_dialogue}
    for p in SAMPLE:
        for render in STYLES.values():
            text = render(p)
            assert isinstance(text, str) and p.question in text
        for render in CHAT_STYLES.values():
            turns = render(p)
            assert turns[0]["role"] == "user" and turns[-1]["role"] == "assistant"


def test_exercise_is_prompt_plus_solution_for_every_domain():
    for p in SAMPLE:
        assert exercise(p) == exercise_prompt(p) + " " + solution_text(p)
        assert textbook(p).endswith(solution_text(p))


def test_code_solution_ends_with_its_code_block():
    for p in (q for q in SAMPLE if q.tests):
        sol = solution_text(p)
        assert sol.endswith("\n```") and "\\boxed" not in sol
        head, code = sol.split("\n", 1)
        assert head == " ".join(p.steps[:-1]) and code == p.steps[-1]
        assert extract_code(sol) == extract_code(p.steps[-1]) and f"def {p.answer}(" in extract_code(sol)


# --- answer_only -------------------------------------------------------------------------------

def test_answer_only_has_no_steps():
    for p in SAMPLE:
        text = answer_only(p)
        work = p.steps[:-1] if p.tests else p.steps
        assert not any(step in text for step in work), p
        if p.tests:
            assert text == f"Question: {p.question}\nAnswer:\n{p.steps[-1]}"
        else:
            assert text == f"Question: {p.question}\nAnswer: {p.answer}"
            assert "\\boxed" not in text and text.splitlines()[-1] == f"Answer: {p.answer}"


# --- tutoring dialogue -------------------------------------------------------------------------

@pytest.mark.parametrize("p", SAMPLE, ids=_ids(SAMPLE))
def test_tutoring_dialogue_structure(p):
    turns = tutoring_dialogue(p)
    assert [t["role"] for t in turns] == ["user", "assistant"] * (len(turns) // 2) and len(turns) == 4
    assert set(turns[0]) == {"role", "content"} and p.question in turns[0]["content"]
    work = p.steps[:-1] if p.tests else p.steps
    assert work[0] in turns[1]["content"]  # the hint is the first step
    if len(work) > 1:
        assert turns[2]["content"].endswith(work[1])  # the student proposes the second step
    said = " ".join(t["content"] for t in turns)
    positions = [said.find(step) for step in work]
    assert -1 not in positions and positions == sorted(positions), "every step appears, in order"
    last = turns[-1]["content"]
    assert last.startswith("Yes, that is right.")
    if p.tests:
        assert last.endswith(p.steps[-1])
    else:
        assert last.endswith(answer_line(p)) and extract_answer(last) == p.answer


def test_tutoring_dialogue_one_step_problem():
    p = make_problem("arithmetic", 0, 0)
    one = type(p)(**{**p.__dict__, "steps": p.steps[:1]})
    turns = tutoring_dialogue(one)
    assert turns[2]["content"] == f"Is the answer {p.answer}?"
    assert turns[3]["content"] == f"Yes, that is right. {answer_line(p)}"


# --- fill in the middle ------------------------------------------------------------------------

@pytest.mark.parametrize("p", SAMPLE, ids=_ids(SAMPLE))
def test_fill_in_the_middle_reconstructs_exercise(p):
    parts = fill_in_the_middle(p)
    assert set(parts) == {"prefix", "middle", "suffix"}
    assert parts["prefix"] + parts["middle"] + parts["suffix"] == exercise(p)
    work = p.steps[:-1] if p.tests else p.steps
    assert parts["middle"] in work  # a whole worked step, never the answer line or the code
    assert parts["prefix"].startswith(exercise_prompt(p))
    text = fill_in_the_middle_text(p)
    assert text == f"{parts['prefix']}{FIM_MARKER}{parts['suffix']}\nMissing step: {parts['middle']}"
    assert text.count(FIM_MARKER) == 1 and FIM_MARKER not in exercise(p)
    assert fill_in_the_middle(p) == parts  # the removed step is fixed per problem


def test_fill_in_the_middle_spreads_over_positions():
    picked = set()
    for p in SAMPLE:
        work = p.steps[:-1] if p.tests else p.steps
        if len(work) >= 3:
            picked.add(work.index(fill_in_the_middle(p)["middle"]))
    assert {0, 1, 2} <= picked


# --- code pairs --------------------------------------------------------------------------------

def test_code_pair():
    code_problems = [p for p in SAMPLE if p.tests]
    assert code_problems
    for p in code_problems:
        pair = code_pair(p)
        assert pair == {"instruction": p.question, "code": extract_code(p.steps[-1])}
        assert not pair["code"].startswith("```") and re.match(rf"def {p.answer}\(", pair["code"])
        space = {}
        exec(compile(pair["code"] + "\n" + p.tests, "<pair>", "exec"), space)  # the teacher's own code
    with pytest.raises(PhiforgeError, match="python_code"):
        code_pair(make_problem("fractions", 0, 0))
