"""Fast checks of the decoder against transformers' Phi3, its masking and cache, export/import, and generation."""

import json

import pytest
import torch

from phiforge.errors import PhiforgeError
from phiforge.lm.generate import generate, sample_next
from phiforge.lm.model import (
    DecodeLinears, KVCache, ModelConfig, Phi3, config_from_hf_dict, hf_config_dict, load_pretrained, save_pretrained,
)

transformers = pytest.importorskip("transformers")

CFG = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=96, rope_theta=500.0,
                  max_seq_len=64)
BOS, EOS, PAD = 1, 2, 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Phi3(CFG).eval()
    # Larger-than-init weights make logits spread out, so argmax ties cannot hide a bug in the tests below.
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    return m


@pytest.fixture(scope="module")
def export_dir(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    save_pretrained(model, CFG, d, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    return d


def _ids(b, t, seed=1):
    return torch.randint(0, CFG.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def test_state_dict_names_and_no_rope_buffers(model):
    keys = set(model.state_dict())
    assert "model.layers.1.self_attn.qkv_proj.weight" in keys and "lm_head.weight" in keys
    assert not any("rope" in k for k in keys)
    assert model.num_params() - model.num_params(exclude_embeddings=True) == 2 * CFG.vocab_size * CFG.d_model


def test_matches_hf_phi3(model):
    hf = transformers.Phi3ForCausalLM(transformers.Phi3Config(**hf_config_dict(CFG, BOS, EOS, PAD))).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    ids = _ids(3, 40)
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4
        # Past the precomputed RoPE table (max_seq_len 64) positions are computed on the fly.
        long_ids = _ids(1, 80)
        assert (model(long_ids) - hf(long_ids).logits).abs().max().item() <= 1e-4


def test_export_loads_in_transformers_and_round_trips(model, export_dir):
    assert {p.name for p in export_dir.iterdir()} == {"config.json", "model.safetensors", "generation_config.json"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_dir).eval()
    assert hf.config.rope_parameters["rope_theta"] == CFG.rope_theta
    ids = _ids(2, 33)
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-4
    loaded, cfg = load_pretrained(export_dir)
    assert cfg == CFG
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())


def test_config_dict_round_trip_and_legacy_rope_theta():
    assert config_from_hf_dict(hf_config_dict(CFG, BOS, EOS, PAD)) == CFG
    legacy = hf_config_dict(CFG, BOS, EOS, PAD)
    del legacy["rope_parameters"]  # transformers 4.x style: only the top-level rope_theta
    assert config_from_hf_dict(legacy).rope_theta == 500.0
    longrope = dict(legacy, rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]})
    with pytest.raises(PhiforgeError, match="rope"):
        config_from_hf_dict(longrope)


def test_causal_masking(model):
    ids = _ids(2, 24)
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % CFG.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    assert ((a[:, 10:] - b[:, 10:]).abs().amax(dim=-1) > 1e-4).all()


def test_kv_cache_matches_full_forward(model):
    ids = _ids(2, 30)
    cache = KVCache(CFG.n_layers, 30)
    with torch.no_grad():
        full = model(ids)
        parts = [model(ids[:, :12], kv_cache=cache), model(ids[:, 12:15], kv_cache=cache)]
        parts += [model(ids[:, t : t + 1], kv_cache=cache) for t in range(15, 30)]
    assert cache.length == 30
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_left_padding_mask_and_positions_match_unpadded(model):
    ids = _ids(1, 9)
    padded = torch.cat([torch.full((1, 4), PAD), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], dim=1)
    pos = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.arange(9)[None]], dim=1)
    with torch.no_grad():
        out = model(padded, position_ids=pos, attention_mask=mask)
        assert torch.isfinite(out).all()
        assert torch.allclose(out[:, 4:], model(ids), atol=1e-5, rtol=0)


def test_bf16_cast_keeps_fp32_rope_tables():
    m = Phi3(CFG).to(torch.bfloat16)
    assert m.rope_cos.dtype == torch.float32 and m.lm_head.weight.dtype == torch.bfloat16
    assert m(_ids(1, 5)).dtype == torch.bfloat16


PROMPTS = [[BOS, 5, 9, 13], [BOS, 200, 17], [BOS, 7, 8, 9, 10, 11, 12, 3], [BOS]]


def test_greedy_is_independent_of_batch_composition(model):
    batched = generate(model, PROMPTS, max_new_tokens=12, pad_id=PAD)
    alone = [generate(model, [p], max_new_tokens=12, pad_id=PAD)[0] for p in PROMPTS]
    assert batched == alone
    assert all(len(o) == 12 for o in batched)
    assert generate(model, PROMPTS, max_new_tokens=12, pad_id=PAD, batch_size=3) == batched


def test_greedy_matches_full_forward_argmax(model):
    prompt = PROMPTS[2]
    out = generate(model, [prompt], max_new_tokens=6, pad_id=PAD)[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt) :]


def test_decode_linears_match_f_linear_and_leave_autograd_alone(model):
    from phiforge.lm.model import ONEDNN_LINEAR

    assert ONEDNN_LINEAR  # the CPU builds phiforge installs have oneDNN: without it generation silently slows down
    ids = _ids(3, 10)
    with torch.no_grad():
        plain = model(ids)
        with DecodeLinears(model) as linears:
            assert len(linears.modules) == 4 * CFG.n_layers + 1 and all(m.onednn for m in linears.modules)
            decoded = model(ids)
    assert not any(m.onednn for m in linears.modules)
    assert (decoded - plain).abs().max() < 1e-4
    # With gradients on, oneDNN's op is not used: it has no backward here.
    with DecodeLinears(model):
        model(ids).square().mean().backward()
    inside = model.lm_head.weight.grad.clone()
    model.lm_head.weight.grad = None
    model(ids).square().mean().backward()
    assert torch.equal(inside, model.lm_head.weight.grad)
    model.zero_grad(set_to_none=True)


def test_stop_token_ends_row(model):
    full = generate(model, PROMPTS, max_new_tokens=12, pad_id=PAD)
    stop = full[0][5]
    stopped = generate(model, PROMPTS, max_new_tokens=12, pad_id=PAD, stop_ids=[stop])
    for f, s in zip(full, stopped):
        expected = f[: f.index(stop)] if stop in f else f
        assert s == expected
    assert stopped[0] == full[0][: full[0].index(stop)]


def test_stop_text_ends_a_row_once_it_says_so_and_leaves_the_others(model):
    """`stop_text` (a stop string in the row's text) ends a row after the token that completes it; every other row
    decodes as it would have, so the texts cut at the stop string are unchanged and only steps are saved."""
    full = generate(model, PROMPTS, max_new_tokens=12, pad_id=PAD)
    seen = []

    def stop_text(ids):  # row 0's fourth token ends it, whatever the text
        seen.append(list(ids))
        return ids == full[0][:4]

    stopped = generate(model, PROMPTS, max_new_tokens=12, pad_id=PAD, stop_text=stop_text)
    assert stopped == [full[0][:4], *full[1:]]
    assert full[2][:1] in seen and full[2][:5] in seen  # asked after each token


def test_engine_stop_strings_end_rows_and_cut_the_same_text(model):
    from phiforge.lm.engine import PhiforgeEngine

    class Tok:  # token ids as text, one character each
        pad_id, stop_ids = PAD, []

        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

    engine = PhiforgeEngine(model, Tok())
    kw = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0, batch_size=4)
    texts = engine.complete(PROMPTS, stops=(), **kw)
    stop = texts[1][3:5]  # a two-character stop string inside row 1's reply
    cut = [t[: t.index(stop)] if stop in t else t for t in texts]
    assert engine.complete(PROMPTS, stops=(stop,), **kw) == cut


def test_seeded_sampling_is_reproducible_and_tiny_top_p_is_greedy(model):
    kw = dict(max_new_tokens=10, pad_id=PAD, temperature=1.0)
    a = generate(model, PROMPTS, seed=123, **kw)
    assert a == generate(model, PROMPTS, seed=123, **kw)
    assert a != generate(model, PROMPTS, seed=7, **kw)
    greedy = generate(model, PROMPTS, max_new_tokens=10, pad_id=PAD)
    assert generate(model, PROMPTS, seed=5, top_p=1e-6, **kw) == greedy


def test_sample_next_top_p_keeps_only_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.7, g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample_next(logits, 0.0, 1.0, None)) == 0


def test_sampling_frequencies_follow_the_distribution_and_skip_zero_weights():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    logits = torch.log(probs).expand(4000, -1)  # -inf where the weight is zero
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits, 1.0, 1.0, g) for _ in range(5)])
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    assert freq[1] == 0 and freq[5] == 0
    # 20,000 draws: a standard error under 0.0036 for every entry, so 0.015 is more than four of them.
    assert (freq - probs.double()).abs().max() < 0.015


def test_generate_restores_training_mode(model):
    model.train()
    try:
        generate(model, [[BOS]], max_new_tokens=2, pad_id=PAD)
        assert model.training
    finally:
        model.eval()


def test_truncated_checkpoint_raises_phiforge_error(export_dir, tmp_path):
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (tmp_path / name).write_bytes((export_dir / name).read_bytes())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PhiforgeError, match="model.safetensors"):
        load_pretrained(tmp_path)


def test_missing_or_mismatched_checkpoint_raises_phiforge_error(export_dir, tmp_path):
    with pytest.raises(PhiforgeError, match="not found"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "model.safetensors").write_bytes((export_dir / "model.safetensors").read_bytes())
    with pytest.raises(PhiforgeError, match="config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PhiforgeError, match="config.json"):
        load_pretrained(tmp_path)
    cfg = json.loads((export_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=128)))
    with pytest.raises(PhiforgeError, match="gate_up_proj.*shape"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=3)))
    with pytest.raises(PhiforgeError, match="missing"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, model_type="llama")))
    with pytest.raises(PhiforgeError, match="model_type"):
        load_pretrained(tmp_path)
