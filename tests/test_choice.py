"""Multiple choice by log-likelihood and by generation, AMC points, and the fresh AMC-style contest."""

import pytest
import torch
from torch import nn

from phiforge.eval import choice
from phiforge.eval.benchmarks import Benchmark, Item, evaluate
from phiforge.lm.engine import PhiforgeEngine
from phiforge.errors import PhiforgeError
from test_benchmarks import CharTok


class Bigram(nn.Module):
    """Next-token logits from the current token alone: a model whose preferences the test writes down."""

    def __init__(self, prefer: dict[str, str] | None = None):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(CharTok.vocab_size, CharTok.vocab_size))
        with torch.no_grad():
            for after, nxt in (prefer or {}).items():
                self.table[3 + ord(after), 3 + ord(nxt)] = 8.0

    def forward(self, ids):
        return self.table[ids]


OPTIONS = ("3", "7", "9", "4", "5")


def items_with_gold(letter):
    return [Item(f"q{i}", f"What is {i} + {7 - i}?", (letter,), options=OPTIONS) for i in range(6)]


def test_loglik_picks_the_option_the_model_prefers_and_blanks_when_unsure():
    tok = CharTok()
    sure = PhiforgeEngine(Bigram({"{": "7"}), tok)  # after "\boxed{" this model writes 7
    for style in ("chat", "completion"):
        gold, _ = choice.run(sure, items_with_gold("B"), style=style)
        assert (gold["correct"], gold["per_150"]) == (6, 150.0)
        wrong, records = choice.run(sure, items_with_gold("D"), style=style)
        assert (wrong["correct"], wrong["blank"], wrong["per_150"]) == (0, 0, 0.0)
        assert records[0]["chosen"] == "B" and records[0]["probs"][1] > 0.99
    # A model with no preference gives each option 1/5 < 0.25: every question left blank, 1.5 points each.
    unsure, records = choice.run(PhiforgeEngine(Bigram(), tok), items_with_gold("B"))
    assert (unsure["blank"], unsure["per_150"]) == (6, 37.5)
    assert records[0]["probs"] == pytest.approx([0.2] * 5)
    guess, _ = choice.run(PhiforgeEngine(Bigram(), tok), items_with_gold("A"), blank_below=0.0)
    assert guess["correct"] == 6  # forced to answer, ties go to the first option


def test_choose_sum_versus_mean_and_the_blank_threshold():
    # Option 0: one token at log-prob -2; option 1: four tokens at -1 each. Sum prefers the short one, mean the long.
    assert choice.choose([-2.0, -4.0], [1, 4], "sum")[0] == 0
    assert choice.choose([-2.0, -4.0], [1, 4], "mean")[0] == 1
    pick, probs = choice.choose([0.0, 0.0, 0.0, 0.0, 0.0], [1] * 5, "sum", blank_below=0.25)
    assert pick is None and probs == pytest.approx([0.2] * 5)
    with pytest.raises(PhiforgeError, match="normalize"):
        choice.choose([0.0], [1], "max")


def test_generated_answers_map_to_letters_values_or_blank():
    opts = ("1/2", "3", "-4", "10", "0.75")
    assert choice.read_choice("so \\boxed{C}", opts) == (2, "C")
    assert choice.read_choice("The answer is \\boxed{(b)}.", opts)[0] == 1
    assert choice.read_choice("x = 3/4, so \\boxed{3/4}", opts)[0] == 4  # equal to 0.75
    assert choice.read_choice("\\boxed{0.5}", opts)[0] == 0
    assert choice.read_choice("\\boxed{blank}", opts) == (None, "blank")
    assert choice.read_choice("\\boxed{11}", opts) == (None, "11")  # own result not among the options: blank
    assert choice.read_choice("", opts) == (None, None)


def test_amc_points_gold_blank_and_guessing():
    correct = [i % 5 for i in range(100)]
    assert choice.summarize(correct, correct)["per_150"] == 150.0
    assert choice.summarize([None] * 100, correct)["per_150"] == 37.5
    always_a = choice.summarize([0] * 100, correct)
    assert always_a["per_150"] == pytest.approx(30.0) and always_a["correct"] == 20
    assert choice.amc_points(None, 2) == 1.5 and choice.amc_points(1, 2) == 0.0 and choice.amc_points(2, 2) == 6.0


def test_generate_mode_through_the_shared_runner(monkeypatch):
    items = items_with_gold("B")
    replies = iter(["\\boxed{B}", "\\boxed{7}", "\\boxed{blank}", "\\boxed{A}", "I do not know", "\\boxed{8}"])
    monkeypatch.setattr("phiforge.lm.engine.generate",
                        lambda model, prompts, **kw: [CharTok().encode(next(replies)) for _ in prompts])
    bench = Benchmark("toy-mc", "choice", "toy", "", lambda: items)
    summary, records = evaluate(PhiforgeEngine(None, CharTok()), bench, mode="generate")
    assert [r["chosen"] for r in records] == ["B", "B", "blank", "A", "blank", "blank"]
    assert summary["points"] == 6 + 6 + 1.5 + 0 + 1.5 + 1.5
    assert "(A) 3 (B) 7" in CharTok().decode(choice.prompt_ids(PhiforgeEngine(None, CharTok()),
                                                               choice.generate_question("q", OPTIONS), "chat"))


def test_solved_loglik_scores_the_options_in_the_models_own_answer_slot():
    assert choice.answer_slot("2 + 5 = 7. The answer is \\boxed{7}.") == "2 + 5 = 7."
    assert choice.answer_slot("so \\boxed{7}") == "so"
    assert choice.answer_slot("no answer here ") == "no answer here"
    tok = CharTok()
    torch.manual_seed(0)
    engine = PhiforgeEngine(Bigram(), tok)
    with torch.no_grad():
        engine.model.table.normal_()
    items = items_with_gold("B")
    texts = ["0 + 7 = 7. The answer is \\boxed{3}."] * len(items)
    _, records = choice.run(engine, items, mode="solved_loglik", texts=texts)
    assert records[0]["solution"] == "0 + 7 = 7."
    # Each option is scored after the prompt and the solution, in place of the model's own answer line.
    context = tok.chat_prompt(items[0].question) + tok.encode("0 + 7 = 7.")
    by_hand = engine.logprobs([context] * 5, [tok.encode(f" The answer is \\boxed{{{o}}}.") for o in OPTIONS],
                              batch_size=5)
    assert records[0]["logprobs"] == pytest.approx([s for s, _ in by_hand])


def test_answer_only_style_scores_bare_answers_after_the_qa_prompt():
    tok = CharTok()
    engine = PhiforgeEngine(Bigram({" ": "7"}), tok)  # after a space this model writes 7: "Answer: 7"
    assert choice.prompt_ids(engine, "What is 1 + 6?", "qa") == tok.encode("Question: What is 1 + 6?\nAnswer:")
    assert choice.continuation("7", "qa") == "7" and choice.continuation("7", "completion").endswith("{7}.")
    gold, records = choice.run(engine, items_with_gold("B"), style="qa")
    assert (gold["correct"], gold["per_150"]) == (6, 150.0)
    # Q&A shows no work, so conditioning on the model's own "solution" changes nothing.
    solved, _ = choice.run(engine, items_with_gold("B"), style="qa", mode="solved_loglik",
                           texts=["7 Question: next"] * 6)
    assert solved["per_150"] == gold["per_150"]
    with pytest.raises(PhiforgeError, match="style must be chat, completion or qa"):
        choice.prompt_ids(engine, "q", "plain")


def test_bad_choice_items_and_modes_are_named():
    bad = [Item("x", "q", ("F",), options=OPTIONS)]
    with pytest.raises(PhiforgeError, match="choice item x"):
        choice.run(PhiforgeEngine(Bigram(), CharTok()), bad)
    with pytest.raises(PhiforgeError, match="mode must be one of"):
        choice.run(PhiforgeEngine(Bigram(), CharTok()), items_with_gold("A"), mode="vote")


def test_both_engines_score_continuations_alike_batched_or_not(tmp_path):
    pytest.importorskip("transformers")
    from phiforge.lm.engine import HFEngine
    from phiforge.lm.checkpoint import export_model
    from phiforge.lm.model import ModelConfig, Phi3
    from phiforge.lm.tokenizer import ChatTokenizer, train_bpe

    texts = [f"Exercise: What is {a} + {b}?\nSolution: The answer is \\boxed{{{a + b}}}." for a in range(20)
             for b in range(5)]
    tok = ChatTokenizer(train_bpe(texts, vocab_size=280, progress=False))
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ffn=64,
                      max_seq_len=64)
    torch.manual_seed(0)
    model = Phi3(cfg)
    export_model(model, cfg, tok, tmp_path / "m")
    prompts = [tok.encode("Exercise: What is 3 + 4?\nSolution:"), tok.encode("Exercise: 1 + 1?\nSolution:")] * 3
    conts = [tok.encode(f" The answer is \\boxed{{{x}}}.") for x in (7, 12, 2, 2, 100, 5)]
    ours = PhiforgeEngine(model, tok)
    batched = ours.logprobs(prompts, conts, batch_size=4)
    single = ours.logprobs(prompts, conts, batch_size=1)
    theirs = HFEngine(tmp_path / "m", dtype="fp32").logprobs(prompts, conts, batch_size=3)
    with torch.no_grad():  # by hand: one unpadded forward pass per row
        direct = []
        for p, c in zip(prompts, conts):
            lp = model(torch.tensor([p + c]))[0, len(p) - 1 : -1].log_softmax(-1)
            direct.append(lp.gather(-1, torch.tensor(c)[:, None]).sum().item())
    for got in (batched, single, theirs):
        assert [n for _, n in got] == [len(c) for c in conts]
        assert [s for s, _ in got] == pytest.approx(direct, abs=1e-3)
