import pytest

from phiforge.config import load_recipe, recipe_from_dict
from phiforge.errors import PhiforgeError


def test_default_recipe_loads_and_overrides_keep_types():
    r = load_recipe(None, ["pretrain.steps=700", "pretrain.optim.lr=2e-4", "synth.domains={arithmetic: 1}"])
    assert r.name == "tiny"
    assert r.pretrain.steps == 700 and r.pretrain.optim.lr == pytest.approx(2e-4)
    assert r.synth.domains == {"arithmetic": 1.0}


def test_phi4_14b_recipe_has_the_papers_architecture():
    r = load_recipe("phi4-14b")
    m = r.model
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ffn) == (5120, 40, 40, 10, 17920)
    assert (m.vocab_size, m.head_dim) == (100352, 128)
    # midtraining takes the context from 4K to 16K and the RoPE base to phi-4's 250K
    assert (r.pretrain.seq_len, r.midtrain.seq_len, m.max_seq_len) == (4096, 16384, 16384)
    assert r.midtrain.rope_theta == 250000.0 and r.midtrain.lr_scale == pytest.approx(0.1)
    assert r.midtrain.long_fraction == pytest.approx(0.3)
    assert r.pretrain.optim.lr == pytest.approx(3e-4) and r.pretrain.optim.weight_decay == pytest.approx(0.1)
    assert r.pretrain.batch_size * r.pretrain.grad_accum == 5760
    assert r.sft.optim.lr == pytest.approx(1e-6)


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"pretrain": {"stpes": 3}}, "'pretrain.stpes'"),
        ({"pretrain": {"optim": {"lrr": 1.0}}}, "'pretrain.optim.lrr'"),
        ({"colour": 1}, "'colour'"),
        ({"pretrain": {"steps": "many"}}, "pretrain.steps must be an integer"),
        ({"pretrain": {"steps": 1.5}}, "pretrain.steps must be an integer"),
        ({"pretrain": {"dtype": "fp16"}}, "pretrain.dtype must be one of"),
        ({"eval": {"benchmarks": {"gsm9k": 10}}}, "eval.benchmarks.gsm9k is not a benchmark"),
        ({"eval": {"benchmarks": {"gsm8k100": 0}}}, "eval.benchmarks.gsm8k100 must be a positive number"),
        ({"eval": {"benchmark_models": ["sft", "final"]}}, "eval.benchmark_models names 'final'"),
        ({"mixture": {"unique_tokens": {"books": 10}}}, "mixture.unique_tokens.books is not a source"),
        ({"model": {"n_heads": 5}}, "model.n_heads (5) must divide model.d_model"),
        ({"model": {"n_kv_heads": 3}}, "model.n_kv_heads (3) must divide model.n_heads"),
        ({"model": {"vocab_size": 512}, "tokenizer": {"vocab_size": 1024}}, "model.vocab_size (512) must be >="),
        ({"pretrain": {"seq_len": 4096}}, "pretrain.seq_len (4096) must be <= model.max_seq_len"),
        ({"midtrain": {"seq_len": 1024}}, "midtrain.seq_len (1024) must be <= model.max_seq_len (512)"),
        ({"eval": {"seed": 0}}, "eval.seed must differ from synth.seed"),
        ({"synth": {"domains": {"astrology": 1.0}}}, "synth.domains.astrology is not a known domain"),
        ({"pretrain": {"optim": {"warmup_steps": 5000}}}, "pretrain.optim.warmup_steps (5000) must be <"),
        ({"synth": "lots"}, "synth must be a mapping"),
    ],
)
def test_bad_recipes_name_the_key(raw, needle):
    with pytest.raises(PhiforgeError) as e:
        recipe_from_dict(raw, source="r.yaml")
    assert needle in str(e.value) and str(e.value).startswith("r.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("pretrain:\n  steps: 3\n  optim: {lr: 1\n")
    with pytest.raises(PhiforgeError, match=r"bad.yaml line \d+: not valid YAML"):
        load_recipe(p)


def test_unknown_recipe_name_lists_shipped_ones():
    with pytest.raises(PhiforgeError, match="shipped recipes: .*tiny"):
        load_recipe("nonesuch")


def test_section_hash_tracks_only_named_sections():
    a = load_recipe(None)
    b = load_recipe(None, ["eval.n_problems=3"])
    assert a.section_hash("pretrain", "model") == b.section_hash("pretrain", "model")
    assert a.section_hash("eval") != b.section_hash("eval")


def test_a_bare_name_is_the_shipped_recipe_whatever_the_working_directory_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a run folder, say, named like the recipe
    assert load_recipe("tiny").name == "tiny"
    (tmp_path / "mine").write_text("name: mine\n")
    with pytest.raises(PhiforgeError, match=r"no recipe named 'mine'.*give \./mine"):
        load_recipe("mine")
    assert load_recipe("./mine").name == "mine"
    (tmp_path / "phi4-14b.yaml").write_text("name: local\n")  # a path (the suffix says so) is a path
    assert load_recipe("phi4-14b.yaml").name == "local" and load_recipe("phi4-14b").name != "local"
    with pytest.raises(PhiforgeError, match="recipe file ./tiny is not a file"):
        load_recipe("./tiny")


def test_the_names_a_recipe_may_use_are_the_registries_keys():
    from phiforge import config
    from phiforge.data.ingest import FEEDS
    from phiforge.data.problems import DOMAINS
    from phiforge.data.render import STYLES
    from phiforge.data.workflows import WORKFLOWS
    from phiforge.eval.benchmarks import BENCHMARKS

    assert config.DOMAINS == tuple(DOMAINS) and config.STYLES == tuple(STYLES)
    assert config.WORKFLOWS == tuple(WORKFLOWS) and config.FEEDS == tuple(FEEDS)
    assert config.BENCHMARKS == tuple(BENCHMARKS)
