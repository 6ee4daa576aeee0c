"""`phiforge experiment`: specs validated with named errors, runs shared between experiments, statistics right,
and a micro experiment end to end (trained, scored, reported, and skipped on rerun)."""

import json
from pathlib import Path

import pytest
import yaml

from phiforge import experiment as E
from phiforge.eval.benchmarks import spread
from phiforge.errors import PhiforgeError
from conftest import phiforge, write_recipe


def spec(recipe: str, **extra) -> dict:
    return {"name": "micro-exp", "claim": "answer-only Q&A against worked solutions", "recipe": recipe,
            "baseline": "qa", "seeds": [0],
            "suite": {"contest": 6, "amc": 6, "benchmarks": {"gsm8k100": 3}, "max_new_tokens": 12},
            "variants": {"qa": {"style": "qa", "set": {"synth.styles": {"answer_only": 1.0}}},
                         "worked": {"set": {"mixture.unique_tokens": {"synthetic": 3000}}}}} | extra


def test_shipped_experiments_load_and_share_equal_runs():
    names = E.available()
    assert {"synthetic-vs-organic", "size", "repetition", "mixture"} <= set(names)
    exps = {n: E.load(n) for n in names}
    key = lambda n, v, s=0: E.run_key(exps[n], exps[n].variant(v), s)  # noqa: E731
    # Phi-4's mixture at the default size is one run, whichever experiment asks for it ...
    assert key("synthetic-vs-organic", "synthetic") == key("mixture", "phi4") == key("size", "small-synthetic")
    # ... and a seed, or any setting, makes another.
    assert key("mixture", "phi4", 1) != key("mixture", "phi4", 0) != key("mixture", "uniform", 0)
    r = E.recipe_for(exps["repetition"], exps["repetition"].variant("12-epochs"), 2)
    assert (r.synth.seed, r.pretrain.seed, r.mixture.seed) == (2, 2, 2)
    budget = r.pretrain.steps * r.pretrain.batch_size * r.pretrain.seq_len
    assert r.mixture.shares["synthetic"] * budget / r.mixture.unique_tokens["synthetic"] == pytest.approx(12)
    size = exps["size"]
    params = {v.name: E.recipe_for(size, v, 0).model for v in size.variants}
    assert size.variant("large-organic").style == "qa" and params["large-organic"].d_model == 256


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["variants"]["qa"].update(colour=1), "variants.qa.colour is unknown"),
    (lambda s: s.update(baseline="nope"), "baseline must name a variant"),
    (lambda s: s["variants"]["qa"].update(style="plain"), "variants.qa.style must be one of"),
    (lambda s: s["variants"]["worked"]["set"].update({"pretrain.stepz": 3}), "unknown key 'pretrain.stepz'"),
    (lambda s: s["variants"]["worked"]["set"].update({"mixture.unique_tokens": {"web": 0}}),
     "mixture.unique_tokens.web must be positive"),
    (lambda s: s["suite"].update(benchmarks={"gsm9k": 3}), "suite.benchmarks.gsm9k is not a benchmark"),
    (lambda s: s.pop("claim"), "claim is required"),
    (lambda s: s.update(variants={"only": {}}), "at least two variant"),
])
def test_bad_experiments_name_the_field(tmp_path, edit, message):
    raw = spec(str(write_recipe(tmp_path / "micro.yaml")))
    edit(raw)
    with pytest.raises(PhiforgeError, match=message) as err:
        E.from_dict(raw, "exp.yaml")
    assert "exp.yaml" in str(err.value) or "variant worked" in str(err.value)
    with pytest.raises(PhiforgeError, match="no experiment named 'nope'"):
        E.load("nope")


def test_mean_standard_error_and_paired_differences():
    assert E.mean_se([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 0.6454972))
    assert E.mean_se([7.0]) == (7.0, 0.0)
    assert spread(list(range(10)), 3) == [0, 3, 6] and spread([1, 2], 5) == [1, 2]
    exp = E.from_dict(spec("tiny") | {"seeds": [0, 1, 2]}, "exp.yaml")
    metrics = lambda xs: {s: {m: x + k for k, m in enumerate(E.metric_names(exp))} | {"final_val_loss": 1.0,  # noqa
                                                                                    "params": 10.0}
                          for s, x in enumerate(xs)}
    summary = E.summarize(exp, {"qa": metrics([10, 20, 30]), "worked": metrics([13, 21, 35])}, {})
    contest = summary["variants"]["worked"]["metrics"]["contest"]
    assert contest["mean"] == pytest.approx(23.0) and contest["values"] == [13, 21, 35]
    # the differences per seed are 3, 1, 5: mean 3, sd 2, s.e. 2 / sqrt(3)
    assert contest["diff_vs_baseline"] == pytest.approx({"mean": 3.0, "se": 2 / 3**0.5})
    assert "diff_vs_baseline" not in summary["variants"]["qa"]["metrics"]["contest"]


def test_micro_experiment_end_to_end_shares_data_and_reruns_from_cache(tmp_path):
    recipe = write_recipe(tmp_path / "micro.yaml")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec(str(recipe))))
    out = tmp_path / "experiments"
    res = phiforge("experiment", path, "--out", out, "--no-references", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| worked |" in res.stdout and "Paired difference from `qa`" in res.stdout
    results = json.loads((out / "micro-exp" / "results.json").read_text())
    assert (out / "micro-exp" / "comparison.png").stat().st_size > 10_000
    runs = {v: results["runs"][v]["0"] for v in ("qa", "worked")}
    assert runs["qa"] != runs["worked"]
    for v in ("qa", "worked"):
        m = results["variants"][v]["metrics"]
        assert 0 <= m["contest"]["mean"] <= 100 and 0 <= m["amc_loglik"]["mean"] <= 150
        assert m["gsm8k100"]["values"][0] in (0.0, 100 / 3, 200 / 3, 100.0)
    manifests = {v: {s: json.loads(Path(r, s, "manifest.json").read_text()) for s in ("organic", "pretrain")}
                 for v, r in runs.items()}
    # The organic corpus does not depend on the variant: built once, copied to the second run.
    assert manifests["qa"]["organic"]["started"] == manifests["worked"]["organic"]["started"]
    # The capped source holds no more unique tokens than the cap; the other variant reads all of its own.
    unique = {v: manifests[v]["pretrain"]["metrics"]["unique_train_tokens"]["synthetic"] for v in runs}
    assert 2000 < unique["worked"] <= 3000 < unique["qa"]
    qa_lines = (out / "runs").glob("*/experiment/*/contest.jsonl")
    assert any(json.loads(line)["output"] is not None for f in qa_lines for line in f.read_text().splitlines())
    again = phiforge("experiment", path, "--out", out, "--no-references", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretrain: unchanged, skipped" in again.stderr and "pretrain: running" not in again.stderr
    assert json.loads((out / "micro-exp" / "results.json").read_text())["variants"] == results["variants"]
