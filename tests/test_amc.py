"""The fresh AMC-style contest: fresh questions, five distinct options with one right, plausible slips."""

from collections import Counter

import pytest

from phiforge.eval import amc
from phiforge.answers import answers_equal
from phiforge.config import recipe_from_dict
from phiforge.errors import PhiforgeError
from phiforge.data.synth import sample_problem


def test_amc_contest_is_fresh_deterministic_and_drops_seen_questions():
    recipe = recipe_from_dict({"eval": {"amc_n_problems": 40}})
    train = {sample_problem(recipe.synth, i)[0].question for i in range(3000)}
    # Plant some contest questions in "training" to see them dropped.
    planted = {sample_problem(recipe.synth, i, seed=recipe.eval.amc_seed)[0].question for i in range(10)}
    items, info = amc.contest(recipe, train | planted)
    assert len(items) == 40 and info["dropped"]["seen_in_training"] >= len(planted)
    assert not {it.question for it in items} & (train | planted)
    assert [it.options for it in amc.contest(recipe, train | planted)[0]] == [it.options for it in items]
    assert all(f"-{recipe.eval.amc_seed}-" in it.id for it in items)
    letters = Counter(it.answers[0] for it in items)
    assert set(letters) == set("ABCDE")  # shuffled options: the right letter is not stuck in one place


def test_amc_options_are_five_distinct_values_one_right():
    recipe = recipe_from_dict({"eval": {"amc_n_problems": 60},
                               "synth": {"domains": {"arithmetic": 1, "fractions": 1, "linear_equations": 1,
                                                     "number_theory": 1, "decimals_percentages": 1,
                                                     "probability": 1}}})
    items, info = amc.contest(recipe, set())
    for it in items:
        gold = it.options["ABCDE".index(it.answers[0])]
        problem = next(sample_problem(recipe.synth, i, seed=recipe.eval.amc_seed)[0] for i in range(1000)
                       if f"amc-{sample_problem(recipe.synth, i, seed=recipe.eval.amc_seed)[0].id}" == it.id)
        assert answers_equal(gold, problem.answer), (it, problem.answer)
        wrong = [o for o in it.options if o != gold]
        assert len(set(it.options)) == 5
        assert not any(answers_equal(o, problem.answer) for o in wrong), it
        assert sorted(w for w in info["mistakes"][it.id] if w) and info["mistakes"][it.id].count("") == 1


def test_amc_slips_are_the_ones_a_student_makes():
    slips = dict((why, str(x)) for x, why in amc.telling_slips("What is 5/6 + 1/7?"))
    assert slips["added numerators and denominators"] == "6/13"
    assert dict((why, int(x)) for x, why in amc.telling_slips("What is 48 - 19?"))["used + instead of -"] == 67
    assert dict((w, str(x)) for x, w in amc.telling_slips("Solve for x: 4*x + 15 = -25."))[
        "moved the constant without changing its sign"] == "-5/2"
    assert amc.parse_value("14%").form == "percent" and amc.parse_value("x^2 - 1") is None
    assert amc.Value(amc.parse_value("15.29").number, "decimal", 2).text() == "15.29"


def test_amc_config_is_validated_by_name():
    with pytest.raises(PhiforgeError, match="eval.amc_seed"):
        recipe_from_dict({"eval": {"amc_seed": 0}})
    with pytest.raises(PhiforgeError, match="eval.amc_blank_below"):
        recipe_from_dict({"eval": {"amc_blank_below": 1.5}})
    with pytest.raises(PhiforgeError, match="eval.amc_normalize"):
        recipe_from_dict({"eval": {"amc_normalize": "max"}})


def test_report_shows_the_amc_table_and_plot(tmp_path):
    from phiforge import report

    row = {"per_150": 90.0, "per_150_stderr": 5.0, "correct": 12, "blank": 3, "wrong": 5, "slips": {"sign error": 4}}
    amc_summary = {"seed": 2_000_003, "n_problems": 20, "blank_below": 0.25, "normalize": "sum",
                   "dropped": {"seen_in_training": 3, "not_numeric": 0, "repeated": 0},
                   "models": {m: {mode: row for mode in ("loglik", "solved_loglik", "generate")}
                              for m in ("base", "sft")}}
    text = report.to_markdown(report.amc_blocks(amc_summary, tmp_path))
    assert "| sft | log-likelihood after own solution | 90.0 ± 5.0 | 12 | 3 | 5 | sign error (4) |" in text
    assert (tmp_path / "amc.png").stat().st_size > 1000


def test_amc_contest_is_a_benchmark_any_model_can_take():
    from phiforge.eval import benchmarks as B

    bench = B.get("amc-synthetic")
    items = bench.load()
    assert bench.kind == "choice" and len(items) == 100
    assert [i.id for i in items] == [i.id for i in amc.contest(recipe_from_dict({}), set())[0]]
    assert all(len(i.options) == 5 and i.answers[0] in "ABCDE" for i in items)


def test_benchmark_cli_scores_the_amc_contest_with_amc_points(tmp_path):
    import json

    import torch

    from conftest import phiforge
    from phiforge.lm.checkpoint import export_model
    from phiforge.lm.model import ModelConfig, Phi3
    from phiforge.lm.tokenizer import ChatTokenizer, train_bpe

    tok = ChatTokenizer(train_bpe([f"What is {a} + {b}? \\boxed{{{a + b}}}" for a in range(30) for b in range(9)],
                                  vocab_size=300, progress=False))
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ffn=64,
                      max_seq_len=256)
    torch.manual_seed(0)
    export_model(Phi3(cfg), cfg, tok, tmp_path / "m")
    r = phiforge("benchmark", tmp_path / "m", "--tasks", "amc-synthetic", "--limit", "6", "--mode", "generate",
                 "--hide-options", "--max-tokens", "8", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "amc-synthetic (generate):" in r.stdout and "/150 AMC points per 25 questions" in r.stdout
    records = [json.loads(line) for line in (tmp_path / "out" / "amc-synthetic.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(x["points"] in (0.0, 1.5, 6.0) for x in records)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["benchmarks"]["amc-synthetic"]
    assert summary["points"] == sum(x["points"] for x in records)
