"""Real benchmarks from their registry packages: gold answers score 100%, trivial ones about 0%, and the runner's
pass@k bookkeeping."""

import math
import re

import pytest

from phiforge.eval import benchmarks as B
from phiforge.lm import engine as engine_mod
from phiforge.errors import PhiforgeError

from conftest import benchmark_items


def test_gsm8k100_gold_solutions_score_all_and_a_constant_none(gsm8k):
    items = gsm8k
    assert len(items) == 100 and len({i.id for i in items}) == 100
    benny = next(i for i in items if i.id == "gsm8k-test-473")
    assert benny.answers == ("10",) and "shark" in benny.question
    assert all(B.math_correct(i, i.solution) for i in items)  # GSM8K's own worked answers, ending in "#### n"
    assert sum(B.math_correct(i, "The answer is \\boxed{0}.") for i in items) == 0


def test_champ_gold_scores_all_and_constants_score_little():
    items = B.get("champ").load()
    assert len(items) == 270
    assert all(B.math_correct(i, f"So the answer is \\boxed{{{a}}}.") for i in items for a in i.answers)
    # CHAMP has many 0 and yes/no answers, so a constant guess is not quite 0: measured 25 and 24 of 270.
    assert sum(B.math_correct(i, "\\boxed{0}") for i in items) / len(items) < 0.10
    assert sum(B.math_correct(i, "\\boxed{No}") for i in items) / len(items) < 0.10


def test_champ_answer_forms():
    assert B.champ_answers("C(10, 5), or equivalently 252") == ("C(10, 5)", "252")
    assert B.champ_answers("5/14, or approximately 35.7%") == ("5/14",)
    assert B.champ_answers("100 (i.e., all values)") == ("100",)
    assert B.champ_answers("C(n, 4), or an equivalent form such as n(n-1)(n-2)(n-3)/4!") == (
        "C(n, 4)", "n(n-1)(n-2)(n-3)/4!")


def test_humaneval_canonical_solutions_pass_in_the_sandbox_and_stubs_fail():
    items = B.get("humaneval").load()
    assert len(items) == 164 and items[0].id == "HumanEval/0"
    assert all(B.code_passes([(i, i.solution) for i in items]))
    assert not any(B.code_passes([(i, "    return None\n") for i in items[:40]]))
    # A model that restates the whole function in a fenced block is scored on that block.
    fenced = f"Here it is:\n```python\n{items[0].question}{items[0].solution}```\n"
    assert B.code_passes([(items[0], fenced), (items[0], "```python\ndef has_close_elements(a, b):\n    return 1\n```")]) \
        == [True, False]


def test_humaneval_completion_is_cut_at_the_next_top_level_statement():
    body = "    return x + 1\n\n\ndef unrelated():\n    pass\n"
    assert engine_mod.cut_at(body, B.CODE_STOPS) == "    return x + 1\n\n"
    assert engine_mod.cut_at("    return 1\nprint(f(2))", B.CODE_STOPS) == "    return 1"


def test_pass_at_k_is_the_unbiased_estimator():
    assert B.pass_at_k(10, 0, 1) == 0.0 and B.pass_at_k(10, 10, 5) == 1.0
    assert B.pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert B.pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert B.pass_at_k(200, 13, 10) == pytest.approx(1 - math.comb(187, 10) / math.comb(200, 10))
    with pytest.raises(ValueError):
        B.pass_at_k(3, 4, 1)


def test_unknown_benchmark_and_missing_package_name_the_fix():
    with pytest.raises(PhiforgeError, match="known: gsm8k100, champ, humaneval"):
        B.get("mmlu")
    with pytest.raises(PhiforgeError, match="not installed; install it with: pip install champ-dataset"):
        B.package_dir("no_such_package_here", B.CHAMP_INSTALL)


class CharTok:
    """One token per character, enough for the runner's bookkeeping (and for test_choice's bigram model)."""

    pad_id, im_end_id, endoftext_id = 0, 1, 2
    stop_ids = [im_end_id, endoftext_id]
    vocab_size = 3 + 128

    def encode(self, text):
        return [3 + ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i - 3) for i in ids if i > 2)

    def chat_prompt(self, user):
        return self.encode(f"<user>{user}<assistant>")


def test_runner_scores_every_sample_and_aggregates_pass_at_k(monkeypatch):
    items = [B.Item("a", "1 + 1?", ("2",)), B.Item("b", "2 + 2?", ("4",)), B.Item("c", "3 + 3?", ("6",))]
    bench = B.Benchmark("toy", "math", "toy", "", lambda: items)
    # Per prompt, alternately the right answer and a wrong one; item c is always wrong.
    replies = {"1 + 1?": ["\\boxed{2}", "\\boxed{3}"], "2 + 2?": ["\\boxed{4}", "\\boxed{5}"], "3 + 3?": ["7", "8"]}
    tok = CharTok()

    def fake_generate(model, prompts, **kw):
        out, seen = [], {}
        for p in prompts:
            q = tok.decode(p).split("<user>")[1].split("\n")[0]
            k = seen[q] = seen.get(q, -1) + 1
            out.append(tok.encode(replies[q][k % 2]))
        return out

    monkeypatch.setattr("phiforge.lm.engine.generate", fake_generate)
    engine = engine_mod.PhiforgeEngine(None, tok)
    summary, records = B.evaluate(engine, bench, samples=2, temperature=1.0, ks=(1, 2))
    assert [r["n_correct"] for r in records] == [1, 1, 0]
    assert summary["pass@1"] == pytest.approx(1 / 3) and summary["pass@2"] == pytest.approx(2 / 3)
    assert records[0]["samples"][0] == {"output": "\\boxed{2}", "correct": True, "extracted": "2"}
    with pytest.raises(PhiforgeError, match="temperature > 0"):
        B.evaluate(engine, bench, samples=3, temperature=0.0)


def _toy_checkpoint(directory):
    """A tiny random Phi3 with peaked logits (so greedy decoding has no near-ties for two engines to split) and a toy
    addition benchmark."""
    import torch

    from phiforge.lm.checkpoint import export_model
    from phiforge.lm.model import ModelConfig, Phi3
    from phiforge.lm.tokenizer import ChatTokenizer, train_bpe

    texts = [f"Exercise: What is {a} + {b}?\nSolution: The answer is \\boxed{{{a + b}}}." for a in range(30)
             for b in range(5)]
    tok = ChatTokenizer(train_bpe(texts, vocab_size=300, progress=False))
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=128,
                      max_seq_len=512)
    torch.manual_seed(0)
    model = Phi3(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    export_model(model, cfg, tok, directory)
    items = [B.Item(str(i), f"What is {i} + 2?", (str(i + 2),)) for i in range(6)]
    return directory, B.Benchmark("toy", "math", "toy", "", lambda: items)


def test_transformers_engine_matches_phiforge_engine_on_the_same_checkpoint(tmp_path):
    pytest.importorskip("transformers")
    _, bench = _toy_checkpoint(tmp_path / "m")
    ours, _ = engine_mod.load_engine(tmp_path / "m")
    theirs = engine_mod.HFEngine(tmp_path / "m", dtype="fp32")
    assert isinstance(ours, engine_mod.PhiforgeEngine)
    for style in ("chat", "completion"):
        a = B.evaluate(ours, bench, style=style, max_new_tokens=12)[1]
        b = B.evaluate(theirs, bench, style=style, max_new_tokens=12, batch_size=4)[1]
        outputs = [r["samples"][0]["output"] for r in a]
        assert outputs == [r["samples"][0]["output"] for r in b]
        assert len(set(outputs)) > 1 and all(len(o) > 5 for o in outputs), outputs


def test_a_served_model_scores_as_the_checkpoint_does(tmp_path):
    """`phiforge benchmark http://.../v1` through the HTTP teacher against `phiforge serve`: the same greedy outputs
    as the checkpoint on phiforge's own engine."""
    from test_serve import running

    from phiforge.lm.engine import load_chat_model
    from phiforge.serve.server import Limits, Served, Server

    path, bench = _toy_checkpoint(tmp_path / "m")
    local, _ = engine_mod.load_engine(path)
    server = Server([Served("toy", path, *load_chat_model(path)[:2])], Limits(max_tokens=64))
    with running(server) as url:
        remote, name = engine_mod.load_engine(url + "/v1")
        assert isinstance(remote, engine_mod.OpenAIEngine) and name.endswith("(toy)")
        want = [r["samples"][0]["output"] for r in B.evaluate(local, bench, max_new_tokens=12)[1]]
        got = [r["samples"][0]["output"] for r in B.evaluate(remote, bench, max_new_tokens=12)[1]]
        assert got == want and len(set(want)) > 1
        few = [r["samples"][0]["output"] for r in B.evaluate(local, bench, max_new_tokens=12, shots=2)[1]]
        assert [r["samples"][0]["output"] for r in B.evaluate(remote, bench, max_new_tokens=12, shots=2)[1]] == few
        with pytest.raises(PhiforgeError, match="chat-style maths only"):
            B.evaluate(remote, bench, style="completion", max_new_tokens=12)
        with pytest.raises(PhiforgeError, match="serves 1 models|cannot list"):
            engine_mod.load_engine("http://127.0.0.1:9/v1")


def test_a_server_that_wants_an_api_key_is_scored_with_the_key_from_a_variable(tmp_path, monkeypatch, capsys):
    from test_serve import running

    from phiforge import cli
    from phiforge.lm.engine import load_chat_model
    from phiforge.serve.access import Access
    from phiforge.serve.server import Limits, Served, Server

    path, bench = _toy_checkpoint(tmp_path / "m")
    server = Server([Served("toy", path, *load_chat_model(path)[:2])], Limits(max_tokens=64))
    with running(server, Access(api_key="s3cret")) as url:
        with pytest.raises(PhiforgeError, match="wants an API key .*--api-key-env"):
            engine_mod.load_engine(url + "/v1")
        remote, _ = engine_mod.load_engine(url + "/v1", api_key="s3cret")
        assert len(B.evaluate(remote, bench, max_new_tokens=4)[1]) == len(bench.load())
        monkeypatch.delenv("PHIFORGE_TEST_KEY", raising=False)
        assert cli.main(["benchmark", url + "/v1", "--api-key-env", "PHIFORGE_TEST_KEY", "--tasks", "gsm8k100"]) == 2
        assert "'PHIFORGE_TEST_KEY', which is not set" in capsys.readouterr().err


def test_few_shot_prompts_put_worked_examples_first(tmp_path):
    path, bench = _toy_checkpoint(tmp_path / "m")
    engine, _ = engine_mod.load_engine(path)
    items = bench.load()
    examples = B.worked_examples(3)
    assert examples == B.worked_examples(3) and len({q for q, _ in examples}) == 3
    assert all("\\boxed{" in a for _, a in examples)
    text = engine.tok.decode(B.prompts(bench, items, engine, "completion", 2)[0], skip_special=False)
    assert text.count("Exercise: ") == 3 and text.startswith(f"Exercise: {examples[0][0]}\nSolution: {examples[0][1]}")
    assert text.endswith(f"Exercise: {items[0].question}\nSolution:")
    chat = engine.tok.decode(B.prompts(bench, items, engine, "chat", 2)[0], skip_special=False)
    assert chat.count("<|im_start|>user") == 3 and chat.count("<|im_start|>assistant") == 3
    assert B.prompts(bench, items, engine, "chat", 0) == [engine.tok.chat_prompt(f"{it.question}\n{B.MATH_INSTRUCTION}")
                                                          for it in items]
    qa = B.worked_examples(2, "qa")
    assert [q for q, _ in qa] == [q for q, _ in examples[:2]] and all("\\boxed" not in a for _, a in qa)
    text = engine.tok.decode(B.prompts(bench, items, engine, "qa", 2)[0], skip_special=False)
    assert text == f"Question: {qa[0][0]}\nAnswer: {qa[0][1]}\n\nQuestion: {qa[1][0]}\nAnswer: {qa[1][1]}\n\n" \
                   f"Question: {items[0].question}\nAnswer:"
    summary, _ = B.evaluate(engine, bench, style="completion", max_new_tokens=8, shots=2)
    assert summary["shots"] == 2
    with pytest.raises(PhiforgeError, match="shots must be >= 0"):
        B.evaluate(engine, bench, shots=-1)


def test_gsm_symbolic_variants_are_new_seeded_and_their_gold_scores_all(gsm8k):
    from phiforge.eval import gsm_symbolic as G

    items, skipped = G.variants()
    # Template 43's #answer: expression repeats a string instead of computing, so it disagrees with its own
    # worked answer on every draw and yields no variant; every other template gives one.
    assert len(items) == 99 and skipped["answers_disagree"] >= 1
    originals = {i.question for i in gsm8k}
    assert not {i.question for i in items} & originals
    assert all(B.math_correct(i, i.solution) for i in items)  # the worked answer rendered from the template
    assert sum(B.math_correct(i, "The answer is \\boxed{0}.") for i in items) == 0
    assert sum(B.math_correct(i, "The answer is \\boxed{10}.") for i in items) <= 3
    again, _ = G.variants(limit=10)
    assert [i.question for i in again] == [i.question for i in items[:10]]
    other, _ = G.variants(seed=1, limit=10)
    assert sum(a.question != b.question for a, b in zip(other, again)) >= 8
    assert B.get("gsm-symbolic").kind == "math"
    with pytest.raises(PhiforgeError, match="per_template"):
        G.variants(per_template=0)


def test_gsm_symbolic_answer_is_recomputed_from_the_template(gsm8k):
    from phiforge.eval import gsm_symbolic as G

    items, _ = G.variants(limit=1, per_template=3)  # the shark template: percent = 100 * k * y / (12 * x)
    assert len(items) == 3 and len({i.question for i in items}) == 3
    for it in items:
        x, k, y = map(int, re.match(r"\D*(\d+)-foot \w+ with (\d+) (\d+)-inch", it.question).groups())
        assert it.answers == (str(100 * k * y // (12 * x)),)


def test_deepmind_mathematics_gold_scores_all_and_a_constant_little():
    items = benchmark_items("deepmind-math")  # generated on first use in an environment of its own
    assert len(items) >= 100 and len({i.id for i in items}) == len(items)
    assert all(B.math_correct(i, f"So the answer is \\boxed{{{i.answers[0]}}}.") for i in items)
    assert sum(B.math_correct(i, "\\boxed{0}") for i in items) / len(items) < 0.05
    assert sum(B.math_correct(i, "\\boxed{True}") for i in items) / len(items) < 0.05


def test_deepmind_mathematics_sets_up_on_first_use_and_names_a_bad_line(tmp_path, monkeypatch):
    from phiforge.eval import deepmind

    calls = []

    def setup(split):  # stands in for the minute of venv and generation
        calls.append(split)
        (tmp_path / split).mkdir()
        (tmp_path / split / deepmind.SETTINGS).write_text("{}")
        (tmp_path / split / "numbers__gcd.jsonl").write_text(
            '{"question": "What is the gcd of 4 and 6?", "answer": "2"}\n{"question": "no answer"}\n')

    monkeypatch.setattr(deepmind, "SETS", tmp_path)
    monkeypatch.setattr(deepmind, "setup", setup)
    with pytest.raises(PhiforgeError, match="numbers__gcd.jsonl:2"):
        deepmind.load()
    assert calls == ["interpolate"]
    with pytest.raises(PhiforgeError, match="numbers__gcd.jsonl:2"):
        deepmind.load()
    assert calls == ["interpolate"]  # made once: the second load reads what the first one set up
