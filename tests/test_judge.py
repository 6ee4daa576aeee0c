"""Judge-guided DPO (Phi-4 §4.2): the programmatic judge's rubric, the pairing rule, parsing an LLM judge's verdicts,
and the `dpo2` stage on a micro run."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import MICRO
from phiforge.config import recipe_from_dict
from phiforge.errors import PhiforgeError
from phiforge.train.judge import JudgeTask, LLMJudge, ProgrammaticJudge, Scores, parse_verdict, preference_pairs, prefer
from phiforge.pipeline import BY_NAME, prepare, run_stage
from phiforge.lm.completions import Completion

QUESTION = "Solve for x: 3x + 5 = 20."
REFERENCE = "Subtract 5 from both sides: 3x = 15.\nDivide both sides by 3: x = 5.\nThe answer is 5."


def test_programmatic_judge_scores_what_it_can_measure():
    judge = ProgrammaticJudge()
    good, wrong, unstated, cut, loop, bare = judge.score([
        JudgeTask(QUESTION, REFERENCE, REFERENCE, "5"),
        JudgeTask(QUESTION, REFERENCE.replace("x = 5.", "x = 6.").replace("is 5", "is 6"), REFERENCE, "5"),
        JudgeTask(QUESTION, "Subtract 5: 3x = 15.\nDivide by 3 and we are done", REFERENCE, "5"),
        JudgeTask(QUESTION, "Subtract 5 from both sides: 3x = 15.\nDivide", REFERENCE, "5", finished=False),
        JudgeTask(QUESTION, "3x = 15 so " * 40 + "\nThe answer is 5.", REFERENCE, "5"),
        JudgeTask(QUESTION, "The answer is 5.", REFERENCE, "5"),
    ])
    assert (good.accuracy, good.style, good.detail, good.faults) == (5, 5, 5, ())
    assert wrong.accuracy == 1 and "final answer '6' is wrong" in wrong.faults and wrong.style == 5
    assert unstated.accuracy == 1 and unstated.style == 4 and "does not state its final answer" in unstated.faults
    assert cut.style == 3 and "ran out of tokens" in cut.faults  # unfinished and no stated answer
    assert loop.accuracy == 5 and loop.style == 3 and "repeats itself" in loop.faults
    assert bare.accuracy == 5 and bare.detail == 3  # right, but shows one worked line where three are expected
    with pytest.raises(PhiforgeError, match="exact answer"):
        judge.score([JudgeTask(QUESTION, REFERENCE)])


def test_chosen_is_higher_accuracy_then_higher_mean_and_ties_make_no_pair():
    right_terse, right_full, wrong_full = Scores(5, 3, 2), Scores(5, 5, 5), Scores(1, 5, 5)
    assert prefer(right_terse, wrong_full) == 1  # accuracy decides even against a better-looking wrong answer
    assert prefer(right_terse, right_full) == -1 and prefer(right_full, Scores(5, 5, 5)) == 0
    assert preference_pairs([right_terse, right_full, wrong_full, None, Scores(5, 5, 5)]) == [
        (1, 0), (0, 2), (4, 0), (1, 2), (4, 2)]
    with pytest.raises(PhiforgeError, match="'style' must be an integer from 1 to 5"):
        Scores(5, 0, 3)


def test_llm_verdicts_are_parsed_or_counted_as_unscored():
    assert parse_verdict('Here you go: {"faults": ["sign error"], "accuracy": 2, "style": 4, "detail": 3} thanks') \
        == Scores(2, 4, 3, ("sign error",))
    assert parse_verdict('{"oops" {"accuracy": 5, "style": 5, "detail": 4}') == Scores(5, 5, 4)
    for bad in ("no json at all", '{"accuracy": 6, "style": 5, "detail": 5}', '{"accuracy": "5", "style": 5}',
                '{"accuracy": true, "style": 5, "detail": 5}', "[1, 2, 3]"):
        assert parse_verdict(bad) is None, bad

    class Scripted:
        name = "scripted"

        def __init__(self):
            self.seen = []

        def complete(self, requests):
            self.seen += requests
            return [Completion('{"faults": [], "accuracy": 4, "style": 4, "detail": 4}' if r.messages[-1][
                "content"].endswith("answer is 5.") else "I think it is fine.", "stop", 10, 10) for r in requests]

    teacher = Scripted()
    judge = LLMJudge(teacher)
    verdicts = judge.score([JudgeTask(QUESTION, REFERENCE, REFERENCE), JudgeTask(QUESTION, "x is 7", REFERENCE)])
    assert verdicts == [Scores(4, 4, 4), None] and judge.unparsed == 1 and judge.name == "llm:scripted"
    request = teacher.seen[0]
    assert request.temperature == 0 and "accuracy" in request.messages[0]["content"]
    assert "## Reference solution" in request.messages[1]["content"]


def test_bad_dpo2_recipes_name_the_key():
    for overrides, needle in [({"policies": ["sft"]}, "dpo2.policies must name at least two"),
                              ({"policies": ["sft", "gpt4"]}, "dpo2.policies must name at least two"),
                              ({"n_queries": 4}, "dpo2.n_queries (4) plus pts.n_queries (3) must be <= synth.n_pts"),
                              ({"judge": {"kind": "http"}}, "dpo2.judge.url must be an http(s) URL"),
                              ({"judge": {"kind": "local"}}, "dpo2.judge.model must be a phiforge or transformers"),
                              ({"judge": {"kind": "http", "url": "http://x/v1", "model": "m", "retries": -1}},
                               "dpo2.judge.retries must be >= 0")]:
        raw = yaml.safe_load(yaml.safe_dump(MICRO))
        raw["dpo2"].update(overrides)
        with pytest.raises(PhiforgeError) as e:
            recipe_from_dict(raw, source="r.yaml")
        assert needle in str(e.value), (overrides, str(e.value))


def test_stage_pairs_teacher_over_wrong_policy_answers_and_trains_on_them(tmp_path):
    raw = yaml.safe_load(yaml.safe_dump(MICRO))
    # a learning rate and epochs large enough that a few micro steps move the loss measurably
    raw["dpo2"].update({"epochs": 6, "dtype": "fp32", "log_every": 1, "optim": {"lr": 1e-3}})
    recipe = recipe_from_dict(raw)
    run = prepare(recipe, tmp_path / "run")
    for name in ("synth", "organic", "decontam", "tokenizer", "pretrain", "midtrain", "sft", "pts", "dpo", "dpo2"):
        metrics = run_stage(recipe, run, BY_NAME[name])
    assert metrics["judge"] == "programmatic" and metrics["questions"] == 3 and metrics["responses"] == 9
    assert metrics["mean_scores"]["teacher"]["accuracy"] == 5.0  # the verified reference solutions
    pairs = [json.loads(line) for line in (run.stage_dir("dpo2") / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == metrics["pairs"] > 0
    for p in pairs:
        c, r = p["chosen"], p["rejected"]
        assert c["accuracy"] > r["accuracy"] or (c["accuracy"] == r["accuracy"] and c["overall"] > r["overall"])
    assert sum(p["chosen"]["policy"] == "teacher" for p in pairs) == metrics["chosen_by_policy"]["teacher"] > 0
    history = json.loads((run.stage_dir("dpo2") / "history.json").read_text())["train"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert (run.stage_dir("dpo2") / "model" / "model.safetensors").is_file()
