"""LLM workflows: parsing and filtering against a scripted teacher, and the plumbing through a real HTTP teacher."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from phiforge.data import seed_texts
from phiforge.data.seed_texts import Seed
from phiforge.lm.completions import Completion, TeacherError
from phiforge.data.workflows import Knobs, grounding, parse_critique, parse_exercises, parse_qa, plurality, qa, \
    reverse_code, revise, rewrite, vote

PASSAGE = Seed("doc:0", "test", "python:if", (
    'The "if" statement is used for conditional execution. It selects exactly one of the suites by evaluating '
    "the expressions one by one until one is found to be true; then that suite is executed. If all expressions "
    'are false, the suite of the "else" clause, if present, is executed.'))


class Scripted:
    """A Teacher whose reply to a request is rule(request, last user message); it logs every request."""

    name = "scripted"

    def __init__(self, rule):
        self.rule, self.seen = rule, []

    def complete(self, requests):
        self.seen += requests
        out = []
        for r in requests:
            reply = self.rule(r, r.messages[-1]["content"])
            text, reason = reply if isinstance(reply, tuple) else (reply, "stop")
            out.append(Completion(text, reason, len(r.messages[-1]["content"]) // 4, len(text) // 4))
        return out


EXERCISES = """Here are the exercises.

**Exercise 1:** If `x = 0`, which suite of `if x: A elif x == 0: B else: C` runs?
**Solution:** The first test `x` is false, the second `x == 0` is true, so its suite runs.
**Answer:** B

Exercise 2: How many suites of one if statement run?
Solution: Exactly one is selected, or none when every test is false and there is no else.
Answer: at most one

Exercise 3: What runs when all tests are false?
Solution: the else suite, if there is one"""


def test_exercises_parse_through_markdown_and_a_block_without_answer_is_named():
    found, problems = parse_exercises(EXERCISES)
    assert [a for _, _, a in found] == ["B", "at most one"]
    assert found[0][0].startswith("If `x = 0`") and "second `x == 0` is true" in found[0][1]
    assert problems == ["exercise 3 has no final answer"]
    assert parse_exercises("Sure! I love this passage.") == ([], ["no 'Exercise:' block in the reply"])
    boxed, _ = parse_exercises("Exercise: 2+2?\nSolution: Add them: \\boxed{4}.")
    assert boxed == [("2+2?", "Add them: \\boxed{4}.", "4")]


def test_rewrite_keeps_each_exercise_and_rejects_a_passage_without_one():
    other = Seed("doc:1", "test", "python:x", "Another passage about loops.")
    teacher = Scripted(lambda r, msg: EXERCISES if "conditional" in msg else "I cannot do that.")
    records = rewrite(teacher, [PASSAGE, other], Knobs(seed=7))
    assert len(teacher.seen) == 2  # one batched step
    kept = [r for r in records if r.kept]
    assert [r.answer for r in kept] == ["B", "at most one"]
    assert [r.reason for r in records if not r.kept] == ["no 'Exercise:' block in the reply"]
    assert kept[0].text().startswith("Exercise: If `x = 0`") and kept[0].text().endswith("Answer: B")
    step = kept[0].steps[0]
    assert step["step"] == "rewrite" and step["seed"] == teacher.seen[0].seed and step["finish_reason"] == "stop"


def test_a_truncated_reply_loses_its_last_exercise():
    teacher = Scripted(lambda r, msg: (EXERCISES.rsplit("Exercise 3", 1)[0], "length"))
    kept = [r for r in rewrite(teacher, [PASSAGE]) if r.kept]
    assert [r.answer for r in kept] == ["B"]


def test_request_seeds_are_reproducible_and_distinct():
    a, b = Scripted(lambda r, m: EXERCISES), Scripted(lambda r, m: EXERCISES)
    rewrite(a, [PASSAGE, Seed("doc:1", "t", "d", "x")], Knobs(seed=1))
    rewrite(b, [PASSAGE, Seed("doc:1", "t", "d", "x")], Knobs(seed=1))
    assert [r.seed for r in a.seen] == [r.seed for r in b.seen]
    assert len({r.seed for r in a.seen}) == 2


CRITIQUE = "**Correctness:** 4/5\nReasoning: 5\n- Clarity: 3\n**Suggestions:** Say what `elif` means."


def test_critique_scores_and_suggestions():
    scores, suggestions = parse_critique(CRITIQUE)
    assert scores == {"correctness": 4, "reasoning": 5, "clarity": 3}
    assert suggestions == "Say what `elif` means."
    with pytest.raises(ValueError, match="'clarity'"):
        parse_critique("Correctness: 4\nReasoning: 5\nThe clarity is fine.")
    with pytest.raises(ValueError, match="'reasoning'"):
        parse_critique("Correctness: 4\nReasoning: 7\nClarity: 3")
    with pytest.raises(ValueError, match="'correctness'"):
        parse_critique("Correctness: 4/10\nReasoning: 4\nClarity: 3")


def revise_rule(critiques):
    """Drafts and revisions are exercises; critique number n (in request order) is critiques[n]."""
    count = Counter()

    def rule(r, msg):
        if "Grade this exercise" in msg:
            key = re.search(r"<passage>\n(.*?)\n", msg).group(1)
            text = critiques[key][count[key]]
            count[key] += 1
            return text
        if "Rewrite the exercise" in msg:
            return "Exercise: When does else run?\nSolution: When every test is false.\nAnswer: when all are false"
        return "Exercise: When does else run?\nSolution: Never.\nAnswer: never"
    return rule


def test_self_revision_keeps_scores_of_every_round_and_rejects_malformed_critiques():
    good = Seed("good", "t", "d", "good passage")
    low = Seed("low", "t", "d", "low passage")
    broken = Seed("broken", "t", "d", "broken passage")
    critiques = {
        "good passage": ["Correctness: 2\nReasoning: 3\nClarity: 4\nSuggestions: the answer is wrong", CRITIQUE],
        "low passage": [CRITIQUE, "Correctness: 2\nReasoning: 3\nClarity: 4"],
        "broken passage": ["Looks great to me!"],
    }
    teacher = Scripted(revise_rule(critiques))
    records = {r.seed.id: r for r in revise(teacher, [good, low, broken], Knobs(rounds=1, min_score=3))}
    assert len(records) == 3
    g = records["good"]
    assert g.kept and g.answer == "when all are false"  # the revision replaced the draft
    assert [s["correctness"] for s in g.scores] == [2, 4] and g.verifier["scores"]["clarity"] == 3
    assert [s["step"] for s in g.steps] == ["draft", "critique-0", "revise-0", "critique-1"]
    assert g.steps[1]["suggestions"] == "the answer is wrong"
    assert not records["low"].kept and "final scores below 3" in records["low"].reason \
        and "'correctness': 2" in records["low"].reason
    assert not records["broken"].kept and records["broken"].reason == "critique 0: no score for 'correctness'"


def test_revise_asks_the_critic_greedily_and_the_reviser_with_the_suggestions():
    critiques = {"p": [CRITIQUE, CRITIQUE]}
    teacher = Scripted(revise_rule(critiques))
    revise(teacher, [Seed("p", "t", "d", "p")], Knobs(rounds=1, temperature=0.9))
    by_kind = {("Grade" in r.messages[-1]["content"], "Rewrite" in r.messages[-1]["content"]): r for r in teacher.seen}
    assert by_kind[(True, False)].temperature == 0.0
    assert "Say what `elif` means." in by_kind[(False, True)].messages[-1]["content"]


@pytest.fixture(scope="module")
def code_seed():
    return seed_texts.code_seeds(1, seed=0)[0]


def code_rule(code_seed, body):
    def rule(r, msg):
        if "task description" in msg:
            return f"Write a function `{code_seed.name}(xs)` that returns each item of xs times -2."
        return f"Here you go:\n```python\n{body}\n```"
    return rule


def test_instruction_reversal_keeps_code_that_passes_the_original_tests(code_seed):
    assert code_seed.name == "scale_list"  # the rules below write this function
    good = "def scale_list(xs):\n    return [-2 * x for x in xs]"
    rec, = reverse_code(Scripted(code_rule(code_seed, good)), [code_seed])
    assert rec.kept, rec.reason
    assert rec.question.startswith("Write a function `scale_list(xs)`") and "-2 * x" in rec.solution
    assert rec.verifier == {"name": "sandbox-tests", "verdict": "pass", "tests": code_seed.tests.count("assert ")}
    assert rec.steps[-1]["step"] == "tests" and rec.steps[-1]["status"] == "ok"
    assert rec.messages()[1]["content"].startswith("```python\ndef scale_list")


def test_instruction_reversal_drops_code_that_fails_them(code_seed):
    wrong = "def scale_list(xs):\n    return [2 * x for x in xs]"
    rec, = reverse_code(Scripted(code_rule(code_seed, wrong)), [code_seed])
    assert not rec.kept and rec.reason.startswith("regenerated code fails the original's tests (error: ")
    assert "AssertionError" in rec.reason
    hang = "def scale_list(xs):\n    while True:\n        pass"
    rec, = reverse_code(Scripted(code_rule(code_seed, hang)), [code_seed],
                        run_tests=lambda code, tests, **kw: __import__("phiforge.sandbox").sandbox.run_tests(
                            code, tests, timeout_s=1.0))
    assert not rec.kept and "(timeout" in rec.reason


def test_instruction_reversal_rejects_unusable_instructions_and_replies(code_seed):
    rec, = reverse_code(Scripted(lambda r, m: "Write some code that does things nicely."), [code_seed])
    assert rec.reason == "instruction: does not name the function 'scale_list'"
    rec, = reverse_code(Scripted(lambda r, m: "Write `scale_list` that doubles, negated, every item of a list."
                                 if "task description" in m else "def scale_list(xs): return xs"), [code_seed])
    assert rec.reason == "regenerate: no ```python code block in the reply"


def test_vote_groups_equivalent_answers():
    assert vote(["1/2", "0.5", "\\frac{1}{2}", "2", None]) == [[0, 1, 2], [3]]


def answers_rule(table):
    """Question -> the answers of draws 0, 1, ... (the draw is read back from the request's place in the log)."""
    count = Counter()

    def rule(r, msg):
        q = msg.split("\n")[0]
        a = table[q][count[q]]
        count[q] += 1
        return f"Working it out... The answer is \\boxed{{{a}}}." if a is not None else "I am not sure."
    return rule


def test_plurality_keeps_a_majority_and_drops_unanimous_all_different_and_ties():
    table = {"q-major": ["12", "12.0", "11", "12", "13"], "q-unanimous": ["7"] * 5,
             "q-scattered": ["1", "2", "3", "4", "5"], "q-tie": ["1", "1", "2", "2", "3"],
             "q-mute": ["4", None, None, None, None]}
    seeds = [Seed(q, "t", "d", q, answer="12" if q == "q-major" else "") for q in table]
    teacher = Scripted(answers_rule(table))
    records = {r.seed.id: r for r in plurality(teacher, seeds, Knobs(k=5, temperature=0.8))}
    assert len(teacher.seen) == 25 and len({r.seed for r in teacher.seen}) == 25  # five distinct draws each
    m = records["q-major"]
    assert m.kept and m.answer == "12" and m.verifier["votes"] == 3 and m.verifier["matches_exact"] is True
    assert m.steps[-1]["groups"] == [3, 1, 1]
    assert records["q-unanimous"].reason == "all 5 answers agree: too easy"
    assert records["q-scattered"].reason == "all 5 readable answers differ"
    assert records["q-tie"].reason == "the two largest groups tie at 2 of 5"
    assert records["q-mute"].reason == "only 1 of 5 answers readable"
    assert m.messages() == [{"role": "user", "content": "q-major"}, {"role": "assistant", "content": "12"}]


def test_qa_keeps_grounded_pairs_only():
    reply = ("Question: What happens when every expression is false?\n"
             "Answer: The suite of the else clause is executed, if present.\n\n"
             "Q: Who designed Python?\nA: Guido van Rossum in Amsterdam.\n\nQuestion: dangling")
    records = qa(Scripted(lambda r, m: reply), [PASSAGE], Knobs(grounding=0.6))
    assert [(r.kept, r.question[:10]) for r in records] == [(True, "What happe"), (False, "Who design")]
    assert "not grounded" in records[1].reason
    assert parse_qa("nothing here") == []
    assert grounding("else clause executed", PASSAGE.text) == 1.0
    rec, = qa(Scripted(lambda r, m: "I like this passage."), [PASSAGE])
    assert not rec.kept and rec.reason == "no complete 'Question:/Answer:' pair in the reply"


def test_doc_passages_are_real_bounded_and_deterministic():
    pool = seed_texts.doc_passages()
    assert len(pool) > 100 and all(300 <= len(p.text) <= 1500 for p in pool)
    assert len({p.id for p in pool}) == len(pool)
    assert seed_texts.passages(5, 3) == seed_texts.passages(5, 3) != seed_texts.passages(5, 4)
    assert any('"if" statement' in p.text for p in pool)


def test_question_seeds_carry_the_exact_answer_but_the_prompt_does_not():
    q, = seed_texts.question_seeds(1, 0, ["arithmetic"])
    teacher = Scripted(lambda r, m: "\\boxed{1}")
    plurality(teacher, [q], Knobs(k=2))
    assert q.answer and all(q.answer not in r.messages[-1]["content"].replace(q.text, "") for r in teacher.seen)


def test_every_request_yields_one_record_through_the_http_stack(tmp_path):
    """The real stack: phiforge serve on a micro checkpoint, HTTPTeacher, every workflow. A random model's replies
    are gibberish, so nearly all are rejected, each with a reason; what matters is that none is lost."""
    pytest.importorskip("uvicorn")
    from phiforge.lm.engine import load_chat_model
    from phiforge.config import TeacherConfig
    from phiforge.lm.http_teacher import HTTPTeacher
    from phiforge.serve.server import Limits, Served, Server, build_app
    from phiforge.lm.teachers import make_teacher
    from test_chat import make_checkpoint
    from test_teacher import serving

    ckpt = make_checkpoint(tmp_path / "tiny", max_seq_len=1024)
    model, tok, _ = load_chat_model(ckpt)
    server = Server([Served("tiny", ckpt, model, tok)], Limits(max_tokens=16, batch_window_ms=10))
    passages = [Seed(f"p{i}", "t", "d", f"Passage {i}: if statements pick one suite.") for i in range(3)]
    questions = [Seed(f"q{i}", "t", "d", f"What is {i} + {i}?") for i in range(3)]
    knobs = Knobs(max_tokens=8, k=3, rounds=1)
    with serving(build_app(server)) as url:
        teacher = make_teacher(TeacherConfig(kind="http", url=url + "/v1", model="tiny", concurrency=4),
                               "synth.teacher", cache_dir=tmp_path / "cache")
        assert isinstance(teacher, HTTPTeacher) and teacher.name == "http:tiny"
        results = {"rewrite": rewrite(teacher, passages, knobs), "revise": revise(teacher, passages, knobs),
                   "qa": qa(teacher, passages, knobs), "plurality": plurality(teacher, questions, knobs),
                   "reverse_code": reverse_code(teacher, seed_texts.code_seeds(2, 0), knobs)}
        sent = teacher.stats["completed"]
        again = plurality(teacher, questions, knobs)  # a rerun is served from the cache
    for name, records in results.items():
        assert {r.seed.id for r in records} == {s.id for s in (questions if name == "plurality" else passages)} \
            or name == "reverse_code"
        assert all(r.kept or r.reason for r in records), name
        assert all(r.steps and r.steps[0]["completion_tokens"] > 0 for r in records), name
    assert len(results["plurality"]) == 3 and len(results["reverse_code"]) == 2
    assert sent == teacher.stats["completed"] and teacher.stats["cache_hits"] >= 9
    assert [r.reason for r in again] == [r.reason for r in results["plurality"]]


class Refusing(Scripted):
    """Refuses, as a server does with HTTP `status`, every batch holding a prompt that contains `word`."""

    def __init__(self, rule, word, status):
        super().__init__(rule)
        self.word, self.status = word, status

    def complete(self, requests):
        if any(self.word in r.messages[-1]["content"] for r in requests):
            raise TeacherError(f"HTTP {self.status}: no", url="http://x/v1", status=self.status)
        return super().complete(requests)


def test_a_refused_request_rejects_its_sample_only_and_an_outage_raises():
    long = Seed("long", "t", "d", "TOO-LONG passage")
    teacher = Refusing(lambda r, m: EXERCISES, "TOO-LONG", 400)
    records = rewrite(teacher, [PASSAGE, long])
    assert [r.answer for r in records if r.kept] == ["B", "at most one"]
    refused, = [r for r in records if not r.kept]
    assert refused.seed.id == "long" and refused.reason == "rewrite: the teacher refused the request (HTTP 400: no)"
    table = {"q": ["1", "1", "2"], "TOO-LONG q": ["1", "1", "2"]}
    records = plurality(Refusing(answers_rule(table), "TOO-LONG", 400), [Seed(q, "t", "d", q) for q in table],
                        Knobs(k=3))
    assert [r.kept for r in records] == [True, False] and records[1].reason.startswith("answer: the teacher refused")
    with pytest.raises(TeacherError, match="503"):
        rewrite(Refusing(lambda r, m: EXERCISES, "TOO-LONG", 503), [PASSAGE, long])


def test_synth_stage_adds_llm_samples_and_a_data_card_without_touching_the_programmatic_shards(tmp_path):
    """The synth stage with a local teacher (a micro phiforge checkpoint): LLM samples in their own shards with the
    common schema and provenance, every candidate kept or in rejects.jsonl, and the programmatic shards byte for byte
    those of the same recipe without workflows."""
    import json

    import pyarrow.parquet as pq

    from conftest import MICRO
    from phiforge.data import corpus, shards, synth
    from phiforge.config import recipe_from_dict
    from phiforge.rundir import RunDir
    from test_chat import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "tiny", max_seq_len=2048)
    small = {**MICRO["synth"], "n_pretrain": 30, "n_sft": 10}
    plain = recipe_from_dict({**MICRO, "synth": small})
    llm = recipe_from_dict({**MICRO, "synth": {
        **small, "teacher": {"kind": "local", "model": str(ckpt), "batch_size": 4},
        "workflows": {"seeds": {"rewrite": 1, "plurality": 1, "reverse_code": 1}, "max_tokens": 8, "k": 3}}})
    a, b = RunDir.create(tmp_path / "a"), RunDir.create(tmp_path / "b")
    synth.execute(plain, a)
    metrics = synth.execute(llm, b)
    for kind in ("pretrain", "sft", "pts"):
        mine = [p for p in corpus.shards(b, kind) if "-llm-" not in p.name]
        assert [p.read_bytes() for p in mine] == [p.read_bytes() for p in corpus.shards(a, kind)]
    llm_shards = sorted(p.name for p in b.stage_dir("synth").glob("*-llm-*.parquet"))
    assert llm_shards == ["pretrain-llm-plurality-00000.parquet", "pretrain-llm-reverse_code-00000.parquet",
                          "pretrain-llm-rewrite-00000.parquet"]
    assert pq.read_schema(b.stage_dir("synth") / llm_shards[0]) == shards.PRETRAIN_SCHEMA
    card = {row["workflow"]: row for row in metrics["data_card"]}
    assert card["programmatic"]["kept"] == metrics["kept"] and card["rewrite"]["teacher"] == "local:tiny"
    rejects = [json.loads(line) for line in (b.stage_dir("synth") / "rejects.jsonl").read_text().splitlines()]
    llm_rejects = [r for r in rejects if "-llm-" in r["id"]]
    kept = [r for kind in ("pretrain",) for r in pq.read_table(b.stage_dir("synth") / llm_shards[2]).to_pylist()]
    for name in ("rewrite", "plurality", "reverse_code"):
        assert card[name]["kept"] + card[name]["rejected"] == card[name]["candidates"] >= card[name]["seeds"]
        assert card[name]["teacher_completion_tokens"] > 0
        assert sum(card[name]["reasons"].values()) == card[name]["rejected"]
    assert len(llm_rejects) == sum(card[n]["rejected"] for n in ("rewrite", "plurality", "reverse_code"))
    assert all(r["reason"] and json.loads(r["provenance"])["steps"] for r in llm_rejects)
    assert len({r["id"] for r in llm_rejects + kept}) == len(llm_rejects) + len(kept)
    assert synth.outputs(b)[-1].name == "rejects.jsonl" and not any("cache" in str(p) for p in synth.outputs(b))

    from phiforge.report import build_blocks, to_markdown

    b.write_manifest("synth", {"stage": "synth", "metrics": metrics, "seconds": 1.0}, synth.outputs(b))
    report = to_markdown(build_blocks(llm, b))
    c = card["plurality"]
    assert f"| plurality | local:tiny | 1 | 1 | {c['kept']} | {100 * c['accept_rate']:.1f}% |" in report
    assert "| programmatic | programmatic |" in report


def test_llm_shards_split_over_ranks_resume_one_by_one_and_match_a_single_process(tmp_path, monkeypatch):
    """LLM workflows in shards of synth.workflows.shard_seeds: two cluster ranks make the same shard bytes as one
    process, `phiforge run` afterwards sends no request, and a shard whose marker is lost is the only one redone."""
    from conftest import MICRO
    from phiforge.data import synth
    from phiforge.data import synth_llm
    from phiforge.config import recipe_from_dict
    from phiforge.rundir import RunDir

    teachers = []

    def scripted(cfg, key, cache_dir=None):
        teachers.append(Scripted(lambda r, msg: EXERCISES))
        return teachers[-1]

    monkeypatch.setattr(synth_llm, "make_teacher", scripted)
    recipe = recipe_from_dict({**MICRO, "synth": {
        **MICRO["synth"], "n_pretrain": 20, "n_sft": 5,
        "teacher": {"kind": "http", "url": "http://127.0.0.1:9/v1", "model": "m"},
        "workflows": {"seeds": {"rewrite": 5}, "shard_seeds": 2}}})
    one, two = RunDir.create(tmp_path / "one"), RunDir.create(tmp_path / "two")
    card = {r["workflow"]: r for r in synth.execute(recipe, one)["data_card"]}
    names = [synth_llm.shard_name(recipe.synth, t) for t in synth_llm.llm_tasks(recipe.synth)]
    assert names == [f"pretrain-llm-rewrite-{i:05d}.parquet" for i in range(3)]
    assert card["rewrite"]["seeds"] == 5 and card["rewrite"]["kept"] >= 5

    made = [synth.run_rank(recipe, two, rank, 2) for rank in (0, 1)]
    assert sum(made) == len(synth.shard_tasks(recipe.synth)) + 3
    sent = len(teachers)
    merged = {r["workflow"]: r for r in synth.execute(recipe, two)["data_card"]}["rewrite"]
    assert {**merged, "seconds": 0} == {**card["rewrite"], "seconds": 0}
    assert len(teachers) == sent, "the merge made a teacher although every shard was done"
    for name in names:
        assert (one.stage_dir("synth") / name).read_bytes() == (two.stage_dir("synth") / name).read_bytes()

    (two.stage_dir("synth") / ".done" / f"{names[1]}.json").unlink()
    synth.execute(recipe, two)
    redone = [r.seed for r in teachers[-1].seen]
    assert len(teachers) == sent + 1 and len(set(redone)) == 2  # the two seeds of shard 1, nothing else
    assert (one.stage_dir("synth") / names[1]).read_bytes() == (two.stage_dir("synth") / names[1]).read_bytes()


def test_a_cut_off_answer_counts_only_when_it_was_boxed():
    replies = iter([("So \\boxed{6} and then on and on 7", "length"), ("6 is what I get, so", "length"),
                    ("The answer is \\boxed{6}.", "stop"), ("\\boxed{6}", "stop"), ("\\boxed{5}", "stop")])
    rec, = plurality(Scripted(lambda r, m: next(replies)), [Seed("q", "t", "d", "What is 2 * 3?")], Knobs(k=5))
    assert rec.steps[-1]["answers"] == ["6", None, "6", "6", "5"] and rec.kept and rec.answer == "6"


def test_layout_placeholders_copied_back_are_rejected():
    echo = "Exercise: <the exercise>\nSolution: <the worked solution>\nAnswer: <the final answer>"
    assert parse_exercises(echo) == ([], ["exercise 1 repeats the layout's placeholder for its question and "
                                          "solution and final answer"])
    rec, = rewrite(Scripted(lambda r, m: echo), [PASSAGE])
    assert not rec.kept and "placeholder" in rec.reason
    assert parse_qa("Question: <the question>\nAnswer: <the answer, with its reason>") == []


def test_a_reply_that_only_repeats_the_question_states_no_answer():
    replies = iter(["Solve for x: 2*x + 3 = -29.", "Solve for x: 2*x + 3 = -29.", "So x = -16, \\boxed{-16}",
                    "the answer is -16.", "\\boxed{}"])
    rec, = plurality(Scripted(lambda r, m: next(replies)), [Seed("q", "t", "d", "Solve for x: 2*x + 3 = -29.")],
                     Knobs(k=5))
    assert rec.steps[-1]["answers"] == [None, None, "-16", "-16", None]
    assert not rec.kept and rec.reason == "the largest group has 2 of 5 answers, not more than 50%"


def make_hf_folder(directory):
    """A tiny random Llama with a character-level tokenizer and no chat template, saved as a transformers folder:
    the shape of a base model such as Gemma 3 270M, built in-process."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<bos>", "<unk>", "<end_of_turn>"] + [chr(c) for c in range(32, 127)] + ["\n"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                               pad_token="<pad>", unk_token="<unk>",
                                               additional_special_tokens=["<end_of_turn>"])
    cfg = transformers.LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                   bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.mark.slow  # importing transformers alone takes several seconds on the 2-core machine
def test_a_local_teacher_on_a_transformers_base_model_takes_a_recipe_chat_template(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from phiforge.config import TeacherConfig
    from phiforge.lm.teachers import make_teacher
    from test_chat import make_checkpoint

    folder = make_hf_folder(tmp_path / "base")
    plain = "{{ bos_token }}{% for m in messages %}{{ m['content'] | trim }}\n\n{% endfor %}"
    cfg = TeacherConfig(kind="local", model=str(folder), batch_size=4, chat_template=plain,
                             stop_tokens=["<end_of_turn>"])
    teacher = make_teacher(cfg, "synth.teacher")
    assert teacher.name == "local:base" and 4 in teacher.tok.stop_ids and 1 in teacher.tok.stop_ids
    questions = [Seed(f"q{i}", "t", "d", f"What is {i} + 1?") for i in range(2)]
    records = plurality(teacher, questions, Knobs(k=3, max_tokens=4))
    assert [r.seed.id for r in records] == ["q0", "q1"] and all(r.reason for r in records)
    assert teacher.stats["requests"] == 6 and teacher.stats["batches"] == 2  # sampled draws share batches
    again = plurality(make_teacher(cfg, "synth.teacher"), questions, Knobs(k=3, max_tokens=4))
    assert [r.steps[-1]["answers"] for r in again] == [r.steps[-1]["answers"] for r in records]
    assert [r.reply for r in again] == [r.reply for r in records]  # the same batches sample the same replies

    with pytest.raises(TeacherError, match="'<nope>' is not one token"):
        make_teacher(TeacherConfig(kind="local", model=str(folder), chat_template=plain, stop_tokens=["<nope>"]),
                     "synth.teacher")
    ckpt = make_checkpoint(tmp_path / "phi", max_seq_len=256)
    with pytest.raises(TeacherError, match="only be given to a transformers model folder"):
        make_teacher(TeacherConfig(kind="local", model=str(ckpt), chat_template=plain), "synth.teacher")
    monkeypatch.delenv("PHIFORGE_TEST_KEY", raising=False)
    with pytest.raises(TeacherError, match="organic.teacher.api_key_env names 'PHIFORGE_TEST_KEY', which is not set"):
        make_teacher(TeacherConfig(kind="http", url="http://127.0.0.1:9/v1", model="m",
                                   api_key_env="PHIFORGE_TEST_KEY"), "organic.teacher")


def test_plurality_sends_the_configured_instruction_or_the_bare_question():
    teacher = Scripted(lambda r, m: "\\boxed{2}")
    plurality(teacher, [Seed("q", "t", "d", "What is 1 + 1?")], Knobs(k=3, answer_instruction=""))
    assert {r.messages[-1]["content"] for r in teacher.seen} == {"What is 1 + 1?"}
    plurality(teacher, [Seed("q", "t", "d", "What is 1 + 1?")], Knobs(k=3, answer_instruction="Box it."))
    assert teacher.seen[-1].messages[-1]["content"] == "What is 1 + 1?\n\nBox it."
