"""A transformers causal-LM folder (here a tiny random Gemma 3, sliding-window layers included) behind phiforge's chat
and serve: our decode loop gives transformers' own greedy tokens, drops rows like phiforge's, and serves over HTTP."""

from __future__ import annotations

import shutil

import openai
import pytest
import torch

from phiforge.errors import PhiforgeError
from phiforge.lm.engine import HFEngine, cut_at, load_chat_model
from phiforge.lm.generate import generate, stream
from phiforge.lm.hf import HFChatModel, is_hf_folder
from phiforge.serve.server import Limits, Served, Server

transformers = pytest.importorskip("transformers")
from test_chat import make_checkpoint  # noqa: E402
from test_serve import running  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A Gemma3ForCausalLM folder with a ChatML tokenizer (phiforge's, saved with its chat template)."""
    root = tmp_path_factory.mktemp("hf")
    phiforge_dir = make_checkpoint(root / "phiforge")
    tok = transformers.AutoTokenizer.from_pretrained(phiforge_dir)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=256,
        sliding_window=6, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # peaked logits: greedy never hinges on float noise between padded and unpadded runs
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
        eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
        model.lm_head.weight[eos] = 0.0  # replies run to their budget, so their lengths are known
    model.generation_config.eos_token_id = eos
    out = root / "gemma-tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf(hf_dir):
    return HFChatModel(hf_dir, dtype="fp32")


PROMPTS = ["Add 17 and 25.", "The cat sat on the mat and looked at the garden for a while.", "Hi"]


def test_folder_kinds_and_loading(hf_dir, tmp_path):
    assert is_hf_folder(hf_dir) and not is_hf_folder(tmp_path)
    model, tok, where = load_chat_model(hf_dir)
    assert isinstance(model, HFChatModel) and where == hf_dir and model.cfg.max_seq_len == 256
    assert tok.stop_ids == sorted({tok.tok.convert_tokens_to_ids("<|im_end|>"),
                                   tok.tok.convert_tokens_to_ids("<|endoftext|>")})
    # the folder's own chat template, not ours: here the two agree, since the tokenizer came from phiforge
    ids = tok.encode_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)[0]
    assert tok.decode(ids, skip_special=False).endswith("<|im_start|>assistant<|im_sep|>")
    shutil.copytree(hf_dir, tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(PhiforgeError, match="broken"):
        HFChatModel(tmp_path / "broken")


def test_batched_greedy_equals_transformers_generate_one_prompt_at_a_time(hf):
    prompts = [hf.tok.encode_chat([{"role": "user", "content": p}], add_generation_prompt=True)[0] for p in PROMPTS]
    ours = generate(hf, prompts, max_new_tokens=12, pad_id=hf.tok.pad_id, stop_ids=hf.tok.stop_ids,
                          batch_size=3)
    for prompt, got in zip(prompts, ours):
        with torch.inference_mode():
            want = hf.hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):]
        assert got == want.tolist()
    assert all(len(o) == 12 for o in ours)


def test_rows_leave_the_batch_without_changing_the_others(hf):
    prompts = [hf.tok.encode(p) for p in PROMPTS]
    alone = [generate(hf, [p], max_new_tokens=10, pad_id=hf.tok.pad_id) for p in prompts]
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for step in stream(hf, prompts, max_new_tokens=10, pad_id=hf.tok.pad_id,
                                alive=lambda i: i != 1 or len(got[1]) < 3):  # row 1's client leaves after 3 tokens
        for i, t in step:
            got[i].append(t)
    assert got[0] == alone[0][0] and got[2] == alone[2][0] and got[1] == alone[1][0][:3]
    # sampling is seeded: the same request draws the same tokens
    kw = dict(max_new_tokens=8, pad_id=hf.tok.pad_id, temperature=1.0, seed=5)
    assert generate(hf, prompts, **kw) == generate(hf, prompts, **kw)


def test_benchmark_engine_gives_transformers_generate_texts_through_our_decode_loop(hf_dir):
    """HFEngine decodes with phiforge's loop through the transformers adapter; its greedy texts are the ones
    transformers' own `generate` gives (left-padded batches, stop strings), which it ran on before."""
    engine = HFEngine(hf_dir, dtype="fp32")
    tok = engine.tok.tok
    prompts = [engine.encode(p) for p in PROMPTS] + [engine.chat_prompt(p) for p in PROMPTS]
    kw = dict(max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0, batch_size=4)
    free = engine.complete(prompts, stops=(), **kw)
    stops = (next(o[3:5] for o in free if len(o.strip()) >= 6), "\n\n")  # one that occurs in a reply
    for stops in ((), stops):
        ours = engine.complete(prompts, stops=stops, **kw)
        batch = tok.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
        with torch.inference_mode():
            out = engine.model.hf.generate(**batch, max_new_tokens=12, do_sample=False, tokenizer=tok,
                                           stop_strings=list(stops) or None, pad_token_id=tok.pad_token_id)
        theirs = [cut_at(tok.decode(row, skip_special_tokens=True), stops)
                  for row in out[:, batch["input_ids"].shape[1]:]]
        assert ours == theirs and len(set(ours)) > 1
    assert ours != free  # the stop strings cut some reply


def test_served_over_the_openai_api(hf, hf_dir):
    server = Server([Served("gemma-tiny", hf_dir, hf, hf.tok)], Limits(max_tokens=16, batch_window_ms=20))
    prompt = hf.tok.encode_chat([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True)[0]
    want = hf.tok.decode(generate(hf, [prompt], max_new_tokens=9, pad_id=hf.tok.pad_id)[0])
    with running(server) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="gemma-tiny", messages=[{"role": "user", "content": PROMPTS[0]}],
                                           max_tokens=9, temperature=0)
        assert r.choices[0].message.content == want and r.usage.completion_tokens == 9
        chunks = client.chat.completions.create(model="gemma-tiny", max_tokens=9, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": PROMPTS[0]}])
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
        with pytest.raises(openai.BadRequestError, match="context"):
            client.completions.create(model="gemma-tiny", prompt="cat " * 300, max_tokens=4)
        template = hf.tok.tok.chat_template  # a template that refuses, as Gemma's does a system turn or a repeat
        hf.tok.tok.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
        try:
            with pytest.raises(openai.BadRequestError, match="chat template refused.*roles must alternate"):
                client.chat.completions.create(model="gemma-tiny", max_tokens=4,
                                               messages=[{"role": "user", "content": "a"}])
        finally:
            hf.tok.tok.chat_template = template
