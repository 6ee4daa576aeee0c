import pytest

from phiforge.config import recipe_from_dict
from phiforge.errors import PhiforgeError
from phiforge.eval.contest import clean_output, contest, majority, paired
from phiforge.data.synth import sample_problem


def test_majority_pools_equal_forms_and_breaks_ties_by_order():
    assert majority(["1/2", "0.5", "3", None, "3"]) in ("1/2", "0.5")  # 1/2 and 0.5 are one vote of two
    assert majority(["7", "8"]) == "7"
    assert majority([None, None]) is None


def test_paired_sign_test():
    a = [{"correct": c} for c in [1, 1, 1, 0, 1, 1, 1, 1, 0, 1]]
    b = [{"correct": c} for c in [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]
    r = paired(a, b)
    assert (r["wins"], r["losses"]) == (6, 0)
    assert r["delta"] == pytest.approx(0.6) and r["p_value"] == pytest.approx(2 / 64)
    assert paired(a, a)["p_value"] == 1.0


def test_base_model_output_is_cut_at_the_next_exercise():
    out = "x = 3. The answer is \\boxed{3}.\n\nExercise: What is 2 + 2?\nSolution: The answer is \\boxed{4}."
    assert clean_output(out, "completion").endswith("\\boxed{3}.")
    assert clean_output(out, "chat") == out.strip()
    # After midtraining on numbered problem sets a base model runs on into "Exercise 2:" instead.
    numbered = "x = 16. The answer is \\boxed{16}.\nExercise 2: Solve for x: 2*x = 12.\nSolution: \\boxed{6}."
    assert clean_output(numbered, "completion") == "x = 16. The answer is \\boxed{16}."
    assert clean_output("Exercises like this one: \\boxed{5}.", "completion").endswith("\\boxed{5}.")
    assert clean_output(" -17\nQuestion: What is 2 + 2?\nAnswer: 4", "qa") == "-17"


def test_contest_is_fresh_deterministic_and_drops_seen_questions():
    recipe = recipe_from_dict({"eval": {"n_problems": 30}})
    train_questions = {sample_problem(recipe.synth, i)[0].question for i in range(3000)}
    probs, dropped = contest(recipe, train_questions)
    assert len(probs) == 30 and dropped > 0
    assert not {p.question for p in probs} & train_questions
    assert len({p.question for p in probs}) == 30
    assert [p.id for p in contest(recipe, train_questions)[0]] == [p.id for p in probs]
    assert all(f"-{recipe.eval.seed}-" in p.id for p in probs)  # drawn from the contest seed, not training's


def test_exhausted_problem_space_is_a_clear_error():
    recipe = recipe_from_dict({"eval": {"n_problems": 5}, "synth": {"domains": {"fractions": 1.0}}})
    everything = {sample_problem(recipe.synth, i, seed=recipe.eval.seed)[0].question for i in range(300)}
    with pytest.raises(PhiforgeError, match="eval.n_problems"):
        contest(recipe, everything)
