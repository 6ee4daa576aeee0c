import pytest

from conftest import phiforge
from phiforge.config import load_recipe
from phiforge.lm.flops import param_count, train_flops_per_token
from phiforge.lm.model import Phi3
from phiforge.plan import memory_plan, meta_param_count


def test_phi4_14b_builds_on_meta_with_the_papers_parameter_count():
    r = load_recipe("phi4-14b")
    n = meta_param_count(r)
    assert n == pytest.approx(14.66e9, rel=0.005)
    assert n == param_count(r.model)


def test_param_count_formula_matches_a_real_model():
    r = load_recipe("tiny")
    assert param_count(r.model) == Phi3(r.model).num_params()
    # 6N dominates at short sequences; attention adds a term linear in the sequence length
    fpt = train_flops_per_token(r.model, 256)
    assert fpt > 6 * (param_count(r.model) - r.model.vocab_size * r.model.d_model)
    assert train_flops_per_token(r.model, 512) > fpt


def test_fsdp2_memory_plan_for_14b():
    r = load_recipe("phi4-14b")
    eight = memory_plan(r, gpus=8, gpu_gb=80)
    one = memory_plan(r, gpus=1, gpu_gb=80)
    assert eight.fits and not one.fits
    states = sum(gb for name, gb in eight.rows if "sharded" in name)
    assert states == pytest.approx(16 * 14.66e9 / 8 / 1024**3, rel=0.01)  # 16 bytes per parameter, over 8 GPUs


def test_plan_cli():
    r = phiforge("plan", "phi4-14b", "--gpus", "8")
    assert r.returncode == 0, r.stderr
    assert "14.66B" in r.stdout and "fits" in r.stdout
