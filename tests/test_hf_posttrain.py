"""Post-training a transformers causal LM (`sft.init`): a tiny random Gemma 3 with a base-model tokenizer (BOS, EOS,
no chat tokens, no PAD) built offline, fine-tuned, saved, reloaded by transformers, and trained with DPO."""

from __future__ import annotations

import pytest
import torch

from phiforge.config import DPOConfig, OptimConfig, SFTConfig, recipe_from_dict
from phiforge.lm.logprobs import sequence_logps
from phiforge.train.dpo import precompute_reference, train_on_pairs
from phiforge.errors import PhiforgeError
from phiforge.train.sft import build_example, collate, train
from phiforge.train.optim import cross_entropy

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers  # noqa: E402

from phiforge.lm import hf as adapter  # noqa: E402
from test_chat import CORPUS  # noqa: E402

CHATS = [
    [{"role": "user", "content": "Add 17 and 25."},
     {"role": "assistant", "content": "17 + 25 = 42. The answer is 42."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The cat sat where?"},
     {"role": "assistant", "content": "On the mat."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Multiply 6 by 7."}, {"role": "assistant", "content": "6 x 7 = 42."}],
]


def base_tokenizer(pad_is_eos: bool = False):
    """A base model's tokenizer: byte-level BPE, <bos> prepended to every encode, <eos>, and no chat tokens; PAD is
    missing, or (like the published Phi-4) the EOS itself."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS + [m["content"] for c in CHATS for m in c], trainers.BpeTrainer(
        vocab_size=300, min_frequency=1, special_tokens=["<bos>", "<eos>", "<unk>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                unk_token="<unk>", pad_token="<eos>" if pad_is_eos else None)


def base_model_dir(root, pad_is_eos: bool = False, init_std: float = 0.02):
    tok = base_tokenizer(pad_is_eos)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=128, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=init_std)
    torch.manual_seed(0)
    out = root / f"base{'-pad-eos' if pad_is_eos else ''}-{init_std}"
    transformers.Gemma3ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return base_model_dir(tmp_path_factory.mktemp("hf-post"))


def test_load_adds_chat_tokens_and_a_pad_apart_from_eos(base_dir, tmp_path):
    before = len(transformers.AutoTokenizer.from_pretrained(base_dir))
    model, tok = adapter.load(base_dir)
    assert len(tok.tok) == before + 4  # <|im_start|>, <|im_sep|>, <|im_end|>, <|pad|>
    assert model.hf.get_input_embeddings().num_embeddings == len(tok.tok)
    assert model.hf.get_output_embeddings().weight.data_ptr() == model.hf.get_input_embeddings().weight.data_ptr()
    eos = tok.tok.convert_tokens_to_ids("<eos>")
    assert tok.stop_ids == [tok.im_end_id, eos] and tok.pad_id not in tok.stop_ids
    assert tok.tok.convert_ids_to_tokens(tok.pad_id) == "<|pad|>"
    # a folder whose PAD is its EOS gets a PAD of its own too
    _, tok2 = adapter.load(base_model_dir(tmp_path, pad_is_eos=True))
    assert tok2.pad_id not in tok2.stop_ids and tok2.tok.convert_ids_to_tokens(tok2.pad_id) == "<|pad|>"


def test_load_is_the_same_model_whatever_the_random_state(base_dir):
    """The chat tokens' new rows are random draws: from a fixed seed, so the eval stage's cached replies of the model
    as given stay its replies."""
    torch.manual_seed(1)
    a = adapter.load(base_dir)[0].hf.get_input_embeddings().weight.detach().clone()
    torch.manual_seed(2)
    state = torch.get_rng_state()
    b = adapter.load(base_dir)[0].hf.get_input_embeddings().weight.detach()
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)  # the caller's random stream untouched


def test_chat_rendering_and_loss_mask(base_dir):
    _, tok = adapter.load(base_dir)
    ids, mask = tok.encode_chat(CHATS[2])
    assert ids[0] == tok.tok.bos_token_id and not mask[0]  # the base model's BOS leads, outside the loss
    assert tok.decode(ids, skip_special=False) == (
        "<bos><|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>Hello, how can I help?<|im_end|>"
        "<|im_start|>user<|im_sep|>Multiply 6 by 7.<|im_end|><|im_start|>assistant<|im_sep|>6 x 7 = 42.<|im_end|>")
    # the loss covers exactly both assistant replies and their closing <|im_end|>
    spans, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            spans, cur = spans + [cur], []
    spans += [cur] if cur else []
    assert [tok.decode(s, skip_special=False) for s in spans] == ["Hello, how can I help?<|im_end|>",
                                                                  "6 x 7 = 42.<|im_end|>"]
    # targets of a training example are the masked tokens shifted by one
    x, y = build_example(tok, CHATS[2], max_len=200)
    assert [t for t in y if t != -100] == [t for t, m in zip(ids[1:], mask[1:]) if m]
    with pytest.raises(PhiforgeError, match="chat message 0"):
        tok.encode_chat([{"role": "robot", "content": "x"}])


def assistant_loss(model, examples, pad_id) -> float:
    x, y = collate(examples, pad_id)
    with torch.no_grad():
        loss, count = cross_entropy(model.eval()(x), y)
    return float(loss) / count


def test_sft_lowers_assistant_loss_and_saves_a_folder_transformers_loads(base_dir, tmp_path):
    model, tok = adapter.load(base_dir)
    examples = [build_example(tok, c, 128) for c in CHATS]
    before = assistant_loss(model, examples, tok.pad_id)
    cfg = SFTConfig(batch_size=3, steps=30, dtype="fp32", log_every=10,
                    optim=OptimConfig(lr=1e-2, warmup_steps=3, weight_decay=0.0))
    history = train(model, examples, tok.pad_id, cfg)
    after = assistant_loss(model, examples, tok.pad_id)
    assert after < 0.5 * before and history[-1]["loss"] < history[0]["loss"]

    out = tmp_path / "sft"
    adapter.save(model, tok, out, dtype="fp32")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto").eval()
    ltok = transformers.AutoTokenizer.from_pretrained(out)
    gen = loaded.generation_config
    assert ltok.pad_token_id == tok.pad_id and ltok.eos_token == "<|im_end|>" and ltok.pad_token_id != ltok.eos_token_id
    assert gen.pad_token_id == tok.pad_id and list(gen.eos_token_id) == tok.stop_ids
    assert gen.pad_token_id not in gen.eos_token_id
    # transformers' own chat template prompts the model exactly as it was trained
    prompt = tok.chat_prompt("Add 17 and 25.")
    assert ltok.apply_chat_template(CHATS[0][:1], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) == prompt
    assert assistant_loss(adapter.CausalLM(loaded), examples, tok.pad_id) == pytest.approx(after, abs=1e-5)
    with torch.no_grad():
        reply = loaded.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):]
    assert ltok.decode(reply, skip_special_tokens=True).startswith("17 + 25")
    # bf16 on disk by default: what `dtype="auto"` then loads; reloading for DPO keeps the added tokens
    adapter.save(model, tok, tmp_path / "bf16")
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    again, tok3 = adapter.load(tmp_path / "bf16")
    assert len(tok3.tok) == len(tok.tok) and tok3.stop_ids == tok.stop_ids and tok3.pad_id == tok.pad_id


def test_dpo_on_full_response_and_single_token_pairs_raises_the_margin(base_dir):
    model, tok = adapter.load(base_dir)
    prompt = tok.chat_prompt("Add 17 and 25.")
    right, wrong = tok.encode("17 + 25 = 42."), tok.encode("17 + 25 = 32.")
    pairs = [  # a whole response, and one pivotal token after a shared prefix
        {"prompt_ids": prompt, "chosen_ids": right + [tok.im_end_id], "rejected_ids": wrong + [tok.im_end_id]},
        {"prompt_ids": prompt + tok.encode("17 + 25 ="), "chosen_ids": tok.encode(" 42")[:1],
         "rejected_ids": tok.encode(" 32")[:1]},
    ]
    assert pairs[1]["chosen_ids"] != pairs[1]["rejected_ids"]
    ref = precompute_reference(model, pairs, pad_id=tok.pad_id, batch_size=2, dtype="fp32")
    cfg = DPOConfig(beta=0.1, epochs=8, batch_size=2, dtype="fp32", log_every=1,
                    optim=OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.0))
    steps, history = train_on_pairs(model, pairs, cfg, tok.pad_id)
    assert steps == 8 and history[-1]["loss"] < history[0]["loss"]
    with torch.no_grad():
        model.eval()
        chosen = sequence_logps(model, [p["prompt_ids"] for p in pairs], [p["chosen_ids"] for p in pairs], tok.pad_id)
        rejected = sequence_logps(model, [p["prompt_ids"] for p in pairs], [p["rejected_ids"] for p in pairs],
                                  tok.pad_id)
    margin = (chosen - ref[:, 0]) - (rejected - ref[:, 1])
    assert (margin > 0.5).all()


def test_sft_init_must_be_a_transformers_folder(base_dir, tmp_path):
    with pytest.raises(PhiforgeError, match="sft.init"):
        recipe_from_dict({"sft": {"init": str(tmp_path)}})
    # the run's model.max_seq_len no longer bounds sft.max_len: the folder's own context does, at load time
    r = recipe_from_dict({"sft": {"init": str(base_dir), "max_len": 4096}})
    assert r.sft.init == str(base_dir)


def test_generate_and_rollouts_on_a_transformers_model(base_dir):
    from phiforge.lm.generate import generate, sample_from_prefix

    model, tok = adapter.load(base_dir)
    prompts = [tok.chat_prompt("Add 17 and 25."), tok.chat_prompt("Hi")]
    ours = generate(model, prompts, max_new_tokens=6, pad_id=tok.pad_id, stop_ids=tok.stop_ids, batch_size=2)
    for prompt, got in zip(prompts, ours):  # left padding changes nothing: transformers' greedy, one at a time
        with torch.no_grad():
            want = model.hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                     eos_token_id=tok.stop_ids)[0, len(prompt):].tolist()
        cut = next((i for i, t in enumerate(want) if t in tok.stop_ids), len(want))
        assert got == want[:cut]
    # rollouts are seeded, run to the length budget unless a stop token comes, and keep that stop token when asked
    # (PTS judges complete responses by it)
    kw = dict(max_new_tokens=5, stop_ids=tok.stop_ids, temperature=1.0, keep_stop=True)
    outs = sample_from_prefix(model, prompts[0], 6, generator=torch.Generator().manual_seed(1), **kw)
    assert outs == sample_from_prefix(model, prompts[0], 6, generator=torch.Generator().manual_seed(1), **kw)
    assert all(len(o) == 5 and not set(o) & set(tok.stop_ids) for o in outs)  # near-uniform: none drew a stop
    with torch.no_grad():  # an untied head whose <|im_end|> logit is 40 where the prefix ends: every row stops at once
        logits = model(torch.tensor([prompts[0]]))[0, -1]
        head = model.hf.lm_head
        head.weight = torch.nn.Parameter(head.weight.clone())
        head.weight[tok.im_end_id] = head.weight[logits.argmax()] * (40.0 / logits.max())
    forced = sample_from_prefix(model, prompts[0], 6, generator=torch.Generator().manual_seed(1), **kw)
    assert forced == [[tok.im_end_id]] * 6
    kw["keep_stop"] = False
    assert sample_from_prefix(model, prompts[0], 6, generator=torch.Generator().manual_seed(1), **kw) == [[]] * 6


def fake_run(root, n_sft: int = 6, n_pts: int = 2):
    """A run folder holding only what the post-training stages read: synth's `sft` and `pts` shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from phiforge.rundir import RunDir

    run = RunDir.create(root)
    (synth := run.stage_dir("synth")).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"id": f"s{i}", "question": CHATS[i % 3][0]["content"],
                                          "messages": CHATS[i % 3]} for i in range(n_sft)]),
                   synth / "sft-00000.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"id": f"p{i}", "question": f"Add {i} and 2.", "answer": str(i + 2), "domain": "arithmetic",
         "messages": [{"role": "user", "content": f"Add {i} and 2."},
                      {"role": "assistant", "content": f"{i} + 2 = {i + 2}."}]} for i in range(n_pts)]),
        synth / "pts-00000.parquet")
    for stage in ("synth", "decontam"):  # complete, as far as the stage graph can tell
        run.stage_dir(stage).mkdir(exist_ok=True)
        run.write_manifest(stage, {"stage": stage}, [run.stage_dir(stage)])
    return run


def test_sft_pts_dpo_stages_on_sft_init(base_dir, tmp_path, monkeypatch):
    """The stages themselves, sft.init set: SFT, PTS (rollouts through transformers) and DPO each leave a
    transformers folder, judge-guided DPO trains the DPO model into another, and eval scores the folder as given and
    all three."""
    import json

    from phiforge.pipeline import BY_NAME, run_stage

    run = fake_run(tmp_path / "run")
    recipe = recipe_from_dict({
        "synth": {"n_pts": 2}, "sft": {"init": str(base_dir), "batch_size": 3, "steps": 6, "max_len": 64,
                                        "log_every": 2, "optim": {"lr": 1e-2, "warmup_steps": 1}},
        "pts": {"n_queries": 1, "solutions_per_query": 1, "batch": 2, "max_rollouts": 4, "max_response_tokens": 6,
                "gate_low": 0.0, "gate_high": 1.0},
        "dpo": {"batch_size": 2, "dtype": "fp32", "optim": {"lr": 1e-3}},
        "dpo2": {"n_queries": 1},
        "eval": {"n_problems": 4, "maj_k": 2, "max_new_tokens": 8, "amc_n_problems": 4,
                 "benchmarks": {"gsm8k100": 2}, "benchmark_models": ["init", "sft"],
                 "reference": str(base_model_dir(tmp_path, init_std=0.05))}})
    # through the stage graph: with sft.init there is no midtrained model to wait for
    with pytest.raises(PhiforgeError, match="needs stage 'midtrain'"):
        run_stage(recipe_from_dict({"sft": {"init": ""}}), run, BY_NAME["sft"])
    m = run_stage(recipe, run, BY_NAME["sft"])
    assert m["init"] == str(base_dir) and m["final_loss"] < m["first_loss"]
    saved = transformers.AutoTokenizer.from_pretrained(run.stage_dir("sft") / "model")
    assert "<|im_end|>" in saved.get_vocab() and saved.pad_token_id != saved.eos_token_id

    summary = run_stage(recipe, run, BY_NAME["pts"])
    assert summary["queries"] == 1 and summary["rollouts"] > 0
    # the random policy's pairs are down to luck: DPO gets a hand-made single-token pair on top
    _, tok = adapter.load(run.stage_dir("sft") / "model")
    pair = {"prompt_ids": tok.chat_prompt("Add 0 and 2."), "chosen_ids": tok.encode("0")[:1],
            "rejected_ids": tok.encode("7")[:1]}
    with (run.stage_dir("pts") / "pairs.jsonl").open("a") as f:
        f.write(json.dumps(pair) + "\n")
    m = run_stage(recipe, run, BY_NAME["dpo"])
    assert m["pairs"] >= 1 and m["steps"] >= 1
    out = transformers.AutoModelForCausalLM.from_pretrained(run.stage_dir("dpo") / "model")
    assert out.generation_config.pad_token_id not in out.generation_config.eos_token_id
    # judge-guided DPO: the teacher's reference beats a random policy's reply, so there are pairs to train on
    m = run_stage(recipe, run, BY_NAME["dpo2"])
    assert m["pairs"] >= 1 and m["steps"] >= 1 and m["chosen_by_policy"].get("teacher", 0) >= 1, m
    before = transformers.AutoModelForCausalLM.from_pretrained(run.stage_dir("dpo") / "model")
    after = transformers.AutoModelForCausalLM.from_pretrained(run.stage_dir("dpo2") / "model")
    assert after.generation_config.pad_token_id not in after.generation_config.eos_token_id
    moved = [n for (n, a), b in zip(after.named_parameters(), before.parameters()) if not torch.equal(a, b)]
    assert moved, "judge-guided DPO left every weight as it was"
    monkeypatch.setattr("phiforge.lm.cached_engine.ROOT", tmp_path / "replies")
    metrics = run_stage(recipe, run, BY_NAME["eval"])
    summary = json.loads((run.stage_dir("eval") / "summary.json").read_text())
    assert list(summary["models"]) == ["init", "sft", "dpo", "dpo2"]
    assert set(summary["paired"]) == {"dpo2_vs_dpo", "dpo_vs_sft", "sft_vs_init"}
    assert summary["models"]["init"]["prompt_style"] == "completion" and 0 <= metrics["sft"]["greedy"] <= 1
    assert set(summary["amc"]["models"]) == {"init", "sft", "dpo", "dpo2"}
    assert set(summary["benchmarks"]["models"]) <= {"init", "sft"}
    # the folder as given is scored once per machine: a second eval reads its replies back, records unchanged
    assert summary["models"]["init"]["replies"] == {"from_cache": 0, "generated": 4}  # contest x 2, AMC, GSM8K
    records = (run.stage_dir("eval") / "init.jsonl").read_text()
    run_stage(recipe, run, BY_NAME["eval"])
    again = json.loads((run.stage_dir("eval") / "summary.json").read_text())
    assert again["models"]["init"]["replies"] == {"from_cache": 4, "generated": 0}
    assert (run.stage_dir("eval") / "init.jsonl").read_text() == records
    assert again["benchmarks"]["models"]["init"] == summary["benchmarks"]["models"]["init"]
    # the reference model beside them, on the same items, as a base model; kept per machine as well
    ref = summary["benchmarks"]["reference"]
    assert ref["prompt_style"] == "completion" and ref["results"]["gsm8k100"]["n_items"] == 2
    assert ref["replies"] == {"from_cache": 0, "generated": 1}
    assert again["benchmarks"]["reference"]["replies"] == {"from_cache": 1, "generated": 0}
    assert (run.stage_dir("eval") / "bench-reference-gsm8k100.jsonl").is_file()
    from phiforge.report import benchmark_blocks
    blocks = benchmark_blocks(again["benchmarks"], again["models"], tmp_path, run)
    table = next(b for b in blocks if b[0] == "table")
    assert [row[:2] for row in table[2]] == [["init", "completion"], ["sft", "chat"], ["reference", "completion"]]


def test_head_on_hidden_states_is_the_models_own_logits_with_soft_capping(base_dir, tmp_path):
    """DPO's chunked path calls the backbone and then `head`: it must give the logits transformers' forward gives,
    including Gemma's final soft-capping when the config has one."""
    import phiforge.lm.logprobs as logprobs

    capped = tmp_path / "capped"
    hf = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    hf.config.final_logit_softcapping = 2.0  # small, so that capping visibly changes the logits
    hf.save_pretrained(capped)
    base_tokenizer().save_pretrained(capped)
    model, tok = adapter.load(capped)
    ids = torch.tensor([tok.chat_prompt("Add 17 and 25.")])
    with torch.no_grad():
        logits = model(ids)
        assert logits.abs().max() <= 2.0
        assert torch.allclose(model.head(model(ids, return_hidden=True)), logits, atol=1e-5)
        whole = sequence_logps(model, [ids[0].tolist()], [tok.encode("17 + 25 = 42.")], tok.pad_id)
        logprobs.CHUNK_ELEMENTS, budget = 2 * model.vocab_size, logprobs.CHUNK_ELEMENTS
        try:
            chunked = sequence_logps(model, [ids[0].tolist()], [tok.encode("17 + 25 = 42.")], tok.pad_id)
        finally:
            logprobs.CHUNK_ELEMENTS = budget
    assert torch.allclose(chunked, whole, atol=1e-5)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_sft_loss_through_the_head_in_chunks_is_the_whole_logits_loss(base_dir, monkeypatch, lora_rank):
    """A batch too large for whole logits (Gemma 3's 262k vocabulary) is scored from hidden states at the target
    positions only, the head fused with the loss: the same sum, count and gradients as the whole [B, T, V] logits,
    with every weight training or LoRA's adapters and chat-token rows."""
    import phiforge.train.sft as sft

    model, tok = adapter.load(base_dir)
    if lora_rank:
        pytest.importorskip("peft")
        from phiforge.config import LoRAConfig
        from phiforge.train import lora

        lora.attach(model, tok, LoRAConfig(r=lora_rank), None, "fp32")
        with torch.no_grad():  # adapters away from their zero start, so that they change the loss
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p)) if p.requires_grad else None
    x, y = collate([build_example(tok, c, 128) for c in CHATS], tok.pad_id)

    def run(limit: int):
        monkeypatch.setattr(sft, "CHUNK_ELEMENTS", limit)
        monkeypatch.setattr("phiforge.lm.logprobs.CHUNK_ELEMENTS", limit)
        model.zero_grad()
        loss, count = sft.loss_sum(model, x, y, "fp32")
        loss.backward()
        return float(loss.detach()), count, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    whole, chunked = run(1 << 30), run(3 * model.vocab_size)  # 3 rows a chunk: several chunks, a ragged last one
    assert chunked[1] == whole[1] == int((y != -100).sum())
    assert chunked[0] == pytest.approx(whole[0], rel=1e-5)
    # fp32 sums in another order: equal to ~1e-6 of each gradient's scale
    assert all((a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-7 for a, b in zip(chunked[2], whole[2]))


def test_lora_trains_adapters_and_chat_rows_only_and_saves_a_merged_plain_folder(tmp_path):
    pytest.importorskip("peft")
    from phiforge.config import LoRAConfig
    from phiforge.train import lora

    # Embeddings at a pretrained model's scale: with the frozen head at 0.02 (random init) no adapter could move a
    # logit past about +-0.6, and the loss would stall near uniform
    model, tok = adapter.load(base_model_dir(tmp_path, init_std=0.5))
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    save = lora.attach(model, tok, LoRAConfig(r=4, alpha=8), lambda m, out: adapter.save(m, tok, out, "fp32"), "fp32")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "token_adapter" in n for n in trainable)
    examples = [build_example(tok, c, 128) for c in CHATS]
    start = assistant_loss(model, examples, tok.pad_id)
    train(model, examples, tok.pad_id, SFTConfig(batch_size=3, steps=30, dtype="fp32", log_every=10,
                                                 optim=OptimConfig(lr=2e-2, warmup_steps=3, weight_decay=0.0)))
    trained = assistant_loss(model, examples, tok.pad_id)
    assert trained < 0.6 * start
    save(model, tmp_path / "lora")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lora")  # no peft needed to read it
    after = loaded.state_dict()
    assert not [k for k in after if "lora" in k or "token_adapter" in k]
    assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    emb, old = after["model.embed_tokens.weight"], before["model.embed_tokens.weight"]
    chat = [tok.im_start_id, tok.im_sep_id, tok.im_end_id]
    assert not torch.equal(emb[tok.im_end_id], old[tok.im_end_id])  # the model can learn to end a turn
    others = torch.ones(len(emb), dtype=torch.bool)
    others[chat] = False
    assert torch.equal(emb[others], old[others])
    assert torch.equal(after["model.layers.0.input_layernorm.weight"], before["model.layers.0.input_layernorm.weight"])
    assert not torch.equal(after["model.layers.0.mlp.down_proj.weight"], before["model.layers.0.mlp.down_proj.weight"])
    assert assistant_loss(adapter.CausalLM(loaded), examples, tok.pad_id) == pytest.approx(trained, abs=1e-5)


def test_lora_config_is_checked(base_dir):
    pytest.importorskip("peft")
    from phiforge.config import LoRAConfig
    from phiforge.train import lora

    with pytest.raises(PhiforgeError, match="sft.lora.r .* needs sft.init"):
        recipe_from_dict({"sft": {"lora": {"r": 8}}})
    with pytest.raises(PhiforgeError, match="sft.lora.alpha"):
        recipe_from_dict({"sft": {"init": str(base_dir), "lora": {"r": 8, "alpha": 0}}})
    model, tok = adapter.load(base_dir)
    with pytest.raises(PhiforgeError, match="sft.lora.targets: qkv_proj name no module"):
        lora.attach(model, tok, LoRAConfig(r=4, targets=["q_proj", "qkv_proj"]), None)


def test_lora_in_bf16_keeps_frozen_weights_in_bf16_and_trains(tmp_path):
    pytest.importorskip("peft")
    from phiforge.config import LoRAConfig
    from phiforge.train import lora

    model, tok = adapter.load(base_model_dir(tmp_path, init_std=0.5))
    lora.attach(model, tok, LoRAConfig(r=4, alpha=8), None, "bf16")
    kinds = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert kinds == {(False, torch.bfloat16), (True, torch.float32)}  # the optimiser still updates fp32 values
    examples = [build_example(tok, c, 128) for c in CHATS]
    history = train(model, examples, tok.pad_id, SFTConfig(batch_size=3, steps=30, log_every=1, optim=OptimConfig(
        lr=2e-2, warmup_steps=3, weight_decay=0.0)))
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
