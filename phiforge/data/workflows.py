"""Phi-4's LLM data workflows (§2.2, App. D) as small steps over any `Teacher`.

    records = rewrite(teacher, seeds.passages(20, 0), Knobs(seed=0))
    kept = [r for r in records if r.kept]   # every other record says why in r.reason

Each workflow takes seeds and returns `Record`s: one per candidate sample, kept or rejected, never silently
dropped: a seed whose reply yields nothing still gets one rejected record. Every step of a workflow is one batched
`teacher.complete` over all seeds still alive, so an HTTP teacher keeps its requests in flight and a local model
decodes them as one batch. A teacher's reply is parsed leniently (markdown bold, numbering, case) but a reply
that does not parse rejects its sample with the reason; nothing a teacher says raises here. A teacher that cannot
answer at all (a server down past its retries) raises `TeacherError`: that is an outage, not a bad sample, and a
rerun resumes from the teacher's cache.

Each request carries a seed derived from (knobs.seed, workflow, seed id, step, draw), so a sampled request is
reproducible and an HTTP teacher's disk cache serves a rerun.

The workflows:
- rewrite: a passage -> exercises with worked solutions and a final answer each;
- revise: a passage -> an exercise draft -> (rubric critique with 1-5 scores -> revision) x rounds -> a final
  critique; kept when every final score reaches knobs.min_score, with all rounds' scores recorded;
- reverse_code: reference code -> an instruction -> code regenerated from the instruction alone, kept only when the
  regenerated code passes the reference's tests in phiforge.sandbox;
- plurality: a question -> k sampled answers grouped by answers.answers_equal; dropped when they all agree (too
  easy) or all differ (too hard or ambiguous), when the largest groups tie, or when the largest holds no more than
  knobs.min_share of the k answers; else its answer is the ground truth. Only stated answers count (\\boxed{},
  "####", "the answer is"), never a reply's last number;
- qa: a passage -> question/answer pairs, kept when the answer is grounded in the passage (most of its words occur
  there).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from phiforge import sandbox
from phiforge.answers import answers_equal, extract_answer
from phiforge.config import WorkflowKnobs
from phiforge.data.domains.code import extract_code
from phiforge.data.seed_texts import Seed
from phiforge.lm.completions import ChatRequest, Completion, Teacher, TeacherError
from phiforge.lm.http_teacher import RETRY_STATUSES

RUBRICS = ("correctness", "reasoning", "clarity")


@dataclass
class Knobs(WorkflowKnobs):
    """A workflow call's settings: the recipe's `synth.workflows` knobs and the synth seed."""

    seed: int = 0


@dataclass
class Record:
    workflow: str
    seed: Seed
    kept: bool = False
    reason: str = ""  # why it was rejected; empty when kept
    question: str = ""
    answer: str = ""
    solution: str = ""  # the worked solution, the regenerated code, or the grounded answer text
    steps: list[dict] = field(default_factory=list)  # provenance: every teacher call and check, in order
    verifier: dict = field(default_factory=dict)
    scores: list[dict] = field(default_factory=list)  # revise: rubric scores per critique round
    reply: str = ""  # the teacher's last reply, for auditing a rejection

    def reject(self, reason: str) -> Record:
        self.kept, self.reason = False, reason
        return self

    def keep(self, verifier: dict) -> Record:
        self.kept, self.reason, self.verifier = True, "", verifier
        return self

    def text(self) -> str:
        """The sample as a pretraining document."""
        if self.workflow == "reverse_code":
            return f"{self.question}\n\n```python\n{self.solution.rstrip()}\n```"
        if self.workflow == "plurality":
            return f"Question: {self.question}\nAnswer: {self.answer}"
        if self.workflow == "qa":
            return f"Question: {self.question}\nAnswer: {self.solution}"
        return f"Exercise: {self.question}\nSolution: {self.solution}\nAnswer: {self.answer}"

    def messages(self) -> list[dict]:
        """The sample as a chat: the question, then the solution (or the bare answer) as the assistant's turn."""
        reply = {"reverse_code": f"```python\n{self.solution.rstrip()}\n```", "plurality": self.answer,
                 "qa": self.solution}.get(self.workflow, f"{self.solution}\n\nAnswer: {self.answer}")
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": reply}]


def request_seed(base: int, *parts: object) -> int:
    """A 31-bit seed from the run's seed and where the request sits, so every draw is its own and reproducible."""
    key = "|".join(map(str, (base, *parts)))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") >> 1


def ask(teacher: Teacher, records: Sequence[Record], step: str, prompt: Callable[[Record], str], knobs: Knobs,
        *, draws: Sequence[int] | None = None, temperature: float | None = None) -> list[Completion | None]:
    """One batched call: a prompt per record (a record may come several times, with its draw number in `draws`, to
    be sampled several times); each reply is logged in its record's provenance.

    A request the teacher refuses on its own account (a prompt longer than the model's context: HTTP 400, or the
    local teacher's check) rejects its record with the teacher's message and gets None; the rest of the batch
    stands. A failure that looks like an outage (5xx, 429, timeouts after the teacher's own retries) raises."""
    t = knobs.temperature if temperature is None else temperature
    draws = [0] * len(records) if draws is None else list(draws)
    requests = [ChatRequest.user(prompt(r), temperature=t, max_tokens=knobs.max_tokens,
                                 seed=request_seed(knobs.seed, r.workflow, r.seed.id, step, d))
                for r, d in zip(records, draws)]
    try:
        replies: list = teacher.complete(requests) if requests else []
    except TeacherError as batch_error:
        # Sent again one at a time to find the refused ones; every seeded request answered before is cached.
        replies = []
        for q in requests:
            try:
                replies += teacher.complete([q])
            except TeacherError as e:
                if e.status in RETRY_STATUSES or (e.status is None and e.url is not None):
                    raise batch_error from e
                replies.append(e)
    if len(replies) != len(requests):  # the protocol promises one each; a broken teacher must not misalign samples
        raise RuntimeError(f"teacher {teacher.name} returned {len(replies)} completions for {len(requests)} requests")
    out: list[Completion | None] = []
    for r, q, c, draw in zip(records, requests, replies, draws):
        if isinstance(c, TeacherError):
            why = re.sub(r"^\d+ of \d+ requests failed \(the others are cached\); first: ", "", str(c))[:300]
            r.steps.append({"step": step, "draw": draw, "seed": q.seed, "error": why})
            r.reject(f"{step}: the teacher refused the request ({why})")
            out.append(None)
            continue
        r.steps.append({"step": step, "draw": draw, "seed": q.seed, "temperature": t, "finish_reason": c.finish_reason,
                        "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                        "cached": c.cached})
        r.reply = c.text
        out.append(c)
    return out


def truncated(c: Completion) -> bool:
    return c.finish_reason == "length"


# ---------------------------------------------------------------------------------------------- parsing

_LABEL = r"^[ \t>#*_-]*(?:\d+[.)]\s*)?\**\s*{}\s*(?:\d+)?\s*\**\s*[:.]\**"


def _label(*words: str) -> re.Pattern:
    return re.compile(_LABEL.format("(?:" + "|".join(words) + ")"), re.IGNORECASE | re.MULTILINE)


_EXERCISE, _SOLUTION, _ANSWER = _label("exercise", "problem"), _label("solution"), _label("final answer", "answer")
_QUESTION, _QA_ANSWER = _label("question", "q"), _label("answer", "a")


def _clean(text: str) -> str:
    return text.strip().strip("*").strip()


_PLACEHOLDER = re.compile(r"^<[^<>\n]{1,60}>$")


def placeholder(text: str) -> bool:
    """Whether a part of a reply is one of the layout's `<...>` blanks copied back instead of filled in (small models
    do this)."""
    return bool(_PLACEHOLDER.match(text.strip()))


def parse_exercises(text: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(exercise, solution, answer) triples from `Exercise: / Solution: / Answer:` blocks, and a reason for each
    block that lacks a part. The answer is the `Answer:` line, else a \\boxed{} in the solution."""
    starts = [m for m in _EXERCISE.finditer(text)]
    found, problems = [], []
    for i, m in enumerate(starts):
        block = text[m.end(): starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        sol = _SOLUTION.search(block)
        if not sol:
            problems.append(f"exercise {i + 1} has no 'Solution:' part")
            continue
        question, rest = _clean(block[: sol.start()]), block[sol.end():]
        ans = _ANSWER.search(rest)
        solution = _clean(rest[: ans.start()] if ans else rest)
        answer = _clean(rest[ans.end():].split("\n", 1)[0]) if ans else ""
        if not answer and "\\boxed" in solution:
            answer = extract_answer(solution) or ""
        parts = (("question", question), ("solution", solution), ("final answer", answer))
        missing = [n for n, v in parts if not v]
        if missing:
            problems.append(f"exercise {i + 1} has no {' or '.join(missing)}")
            continue
        copied = [n for n, v in parts if placeholder(v)]
        if copied:
            problems.append(f"exercise {i + 1} repeats the layout's placeholder for its {' and '.join(copied)}")
            continue
        found.append((question, solution, answer))
    if not starts:
        problems.append("no 'Exercise:' block in the reply")
    return found, problems


def parse_critique(text: str, rubrics: Sequence[str] = RUBRICS) -> tuple[dict[str, int], str]:
    """Scores 1-5 per rubric from lines like `Correctness: 4/5`, and the suggestions after `Suggestions:`.
    ValueError naming the rubric when one is missing or out of range."""
    scores = {}
    for name in rubrics:
        m = re.search(rf"^[ \t>#*_-]*\**{name}\**\s*[:=-]\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", text,
                      re.IGNORECASE | re.MULTILINE)
        if not m:
            raise ValueError(f"no score for {name!r}")
        value, scale = float(m.group(1)), m.group(2)
        if scale is not None and scale != "5" or not (1 <= value <= 5) or value != int(value):
            raise ValueError(f"score for {name!r} is {m.group(0).split(':', 1)[-1].strip()!r}, not a whole 1-5")
        scores[name] = int(value)
    sugg = _label("suggestions?", "feedback").search(text)
    return scores, _clean(text[sugg.end():]) if sugg else ""


def parse_qa(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from `Question: / Answer:` (or `Q: / A:`) blocks."""
    pairs = []
    qs = list(_QUESTION.finditer(text))
    for i, m in enumerate(qs):
        block = text[m.end(): qs[i + 1].start() if i + 1 < len(qs) else len(text)]
        a = _QA_ANSWER.search(block)
        q, ans = (_clean(block[: a.start()]), _clean(block[a.end():])) if a else ("", "")
        if q and ans and not placeholder(q) and not placeholder(ans):
            pairs.append((q, ans))
    return pairs


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower())


def grounding(answer: str, passage: str) -> float:
    """Share of the answer's words (three letters or more, or any number) that occur in the passage."""
    words = [w for w in _words(answer) if len(w) >= 3 or w.isdigit()]
    if not words:
        return 0.0
    have = set(_words(passage))
    return sum(w in have for w in words) / len(words)


# -------------------------------------------------------------------------------------------- workflows

def _fresh(workflow: str, seeds: Sequence[Seed]) -> list[Record]:
    return [Record(workflow, s) for s in seeds]


def rewrite(teacher: Teacher, seeds: Sequence[Seed], knobs: Knobs = Knobs()) -> list[Record]:
    """Passage -> exercises with worked solutions; one record per exercise found (or one rejection per passage)."""
    base = _fresh("rewrite", seeds)
    replies = ask(teacher, base, "rewrite", lambda r: (
        f"Read this passage.\n\n<passage>\n{r.seed.text}\n</passage>\n\n"
        f"Write {knobs.exercises} exercises that make a student reason about what the passage says, not just "
        "recall it. Give each one a worked solution, step by step, and a short final answer. Use exactly this "
        "layout for each:\n\nExercise: <the exercise>\nSolution: <the worked solution>\nAnswer: <the final answer>"),
        knobs)
    out = []
    for r, c in zip(base, replies):
        if c is None:
            out.append(r)
            continue
        found, problems = parse_exercises(c.text)
        if truncated(c) and found:
            found = found[:-1]  # the reply was cut off, so its last exercise may be too
            problems.append("the last exercise was cut off at max_tokens")
        if not found:
            out.append(r.reject("; ".join(problems) or "no complete exercise in the reply"))
            continue
        for j, (q, sol, ans) in enumerate(found):
            x = Record("rewrite", r.seed, question=q, solution=sol, answer=ans, steps=[*r.steps, {"exercise": j}],
                       reply=r.reply)
            out.append(x.keep({"name": "format", "verdict": "pass", "checks": ["exercise", "solution", "answer"]}))
    return out


def revise(teacher: Teacher, seeds: Sequence[Seed], knobs: Knobs = Knobs()) -> list[Record]:
    """Draft -> (critique -> revision) x rounds -> final critique; kept when every final score >= min_score."""
    live = _fresh("revise", seeds)
    replies = ask(teacher, live, "draft", lambda r: (
        f"<passage>\n{r.seed.text}\n</passage>\n\nWrite one challenging exercise based on the passage, with a "
        "worked solution and a short final answer, in this layout:\n\n"
        "Exercise: <the exercise>\nSolution: <the worked solution>\nAnswer: <the final answer>"), knobs)
    out = []

    def adopt(records, replies, step):
        alive = []
        for r, c in zip(records, replies):
            if c is None:
                out.append(r)
                continue
            found, problems = parse_exercises(c.text)
            if truncated(c):
                out.append(r.reject(f"{step}: the reply was cut off at max_tokens ({knobs.max_tokens})"))
            elif not found:
                out.append(r.reject(f"{step}: " + "; ".join(problems)))
            else:
                r.question, r.solution, r.answer = found[0]
                alive.append(r)
        return alive

    live = adopt(live, replies, "draft")
    for rnd in range(knobs.rounds + 1):
        replies = ask(teacher, live, f"critique-{rnd}", lambda r: (
            f"<passage>\n{r.seed.text}\n</passage>\n\n"
            f"Exercise: {r.question}\nSolution: {r.solution}\nAnswer: {r.answer}\n\n"
            "Grade this exercise and its solution against the passage. Give each rubric a whole score from 1 "
            "(poor) to 5 (excellent), then suggestions for improving it, in exactly this layout:\n\n"
            + "".join(f"{n.capitalize()}: <1-5>\n" for n in RUBRICS) + "Suggestions: <what to change>"),
            knobs, temperature=0.0)
        graded = []
        for r, c in zip(live, replies):
            if c is None:
                out.append(r)
                continue
            try:
                scores, suggestions = parse_critique(c.text)
            except ValueError as e:
                out.append(r.reject(f"critique {rnd}: {e}"))
                continue
            r.scores.append({"round": rnd, **scores})
            r.steps[-1]["suggestions"] = suggestions[:500]
            graded.append((r, suggestions))
        if rnd == knobs.rounds:
            for r, _ in graded:
                low = {k: v for k, v in r.scores[-1].items() if k != "round" and v < knobs.min_score}
                out.append(r.reject(f"final scores below {knobs.min_score}: {low}") if low else
                           r.keep({"name": "rubric", "verdict": "pass", "min_score": knobs.min_score,
                                   "scores": r.scores[-1]}))
            break
        todo = [r for r, _ in graded]
        notes = {id(r): s for r, s in graded}
        replies = ask(teacher, todo, f"revise-{rnd}", lambda r: (
            f"<passage>\n{r.seed.text}\n</passage>\n\n"
            f"Exercise: {r.question}\nSolution: {r.solution}\nAnswer: {r.answer}\n\n"
            f"A reviewer scored it {r.scores[-1]} and suggested: {notes[id(r)] or 'no changes'}\n\n"
            "Rewrite the exercise and its solution to fix these points, in the same layout:\n\n"
            "Exercise: <the exercise>\nSolution: <the worked solution>\nAnswer: <the final answer>"), knobs)
        live = adopt(todo, replies, f"revise-{rnd}")
    return out


def reverse_code(teacher: Teacher, seeds: Sequence[Seed], knobs: Knobs = Knobs(), *,
                 run_tests: Callable | None = None) -> list[Record]:
    """Code -> instruction -> regenerated code, kept when the regenerated code passes the original's tests.

    The tests run in phiforge.sandbox (model code is untrusted); `run_tests` is there for a caller that wants
    other limits, never to skip the sandbox."""
    if run_tests is None:
        run_tests = sandbox.run_tests
    live = _fresh("reverse_code", seeds)
    replies = ask(teacher, live, "instruction", lambda r: (
        f"```python\n{r.seed.text.rstrip()}\n```\n\n"
        f"Write the task description a programmer would have been given to write this code. Name the function "
        f"`{r.seed.name}` and its parameters, say what it must return, and do not include the code. Reply with "
        "the task description only."), knobs)
    alive = []
    for r, c in zip(live, replies):
        if c is None:
            continue
        text = _clean(re.sub(r"```.*?(```|$)", "", c.text, flags=re.DOTALL))
        if truncated(c):
            r.reject(f"instruction: the reply was cut off at max_tokens ({knobs.max_tokens})")
        elif len(text) < 20:
            r.reject(f"instruction: {len(text)} characters of instruction after removing code")
        elif r.seed.name not in text:
            r.reject(f"instruction: does not name the function {r.seed.name!r}")
        else:
            r.question = text
            alive.append(r)
    replies = ask(teacher, alive, "regenerate", lambda r: (
        f"{r.question}\n\nWrite the Python function in one ```python code block."), knobs, temperature=0.0)
    for r, c in zip(alive, replies):
        if c is None:
            continue
        code = extract_code(c.text)
        if code is None:
            r.reject("regenerate: no ```python code block in the reply")
            continue
        r.solution = code
        result = run_tests(code, r.seed.tests, timeout_s=10.0)
        r.steps.append({"step": "tests", "status": result.status, "wall_s": round(result.wall_s, 3)})
        if result.status == "ok":
            r.keep({"name": "sandbox-tests", "verdict": "pass", "tests": r.seed.tests.count("assert ")})
        else:
            last = (result.stderr.strip().splitlines() or [result.status])[-1][:200]
            r.reject(f"regenerated code fails the original's tests ({result.status}: {last})")
    return live


_STATED = re.compile(r"\\boxed\s*\{|####|answer is", re.IGNORECASE)


def stated_answer(text: str) -> str | None:
    """The reply's final answer if it states one (\\boxed{}, ####, "the answer is"), else None: extract_answer's
    last-number fallback would read a reply that only repeats the question as answering with its last number."""
    return extract_answer(text) if _STATED.search(text) else None


def vote(answers: Sequence[str | None]) -> list[list[int]]:
    """Indices of the answers grouped by equivalence (answers_equal against each group's first member), largest
    first; unreadable answers (None) form no group."""
    groups: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for g in groups:
            if answers_equal(a, answers[g[0]]) or answers_equal(answers[g[0]], a):
                g.append(i)
                break
        else:
            groups.append([i])
    return sorted(groups, key=len, reverse=True)


def plurality(teacher: Teacher, seeds: Sequence[Seed], knobs: Knobs = Knobs()) -> list[Record]:
    """k sampled answers per question; kept with the majority as ground truth unless unanimous, all different, or
    tied. A seed's exact answer, when it has one, is only compared afterwards and recorded."""
    live = _fresh("plurality", seeds)
    for r in live:
        r.question = r.seed.text
    # All k draws of every question in one batch: k times fewer round trips, and a local model fills its batches.
    asked = [r for r in live for _ in range(knobs.k)]
    replies = ask(teacher, asked, "answer", lambda r: (
        f"{r.question}\n\n{knobs.answer_instruction}" if knobs.answer_instruction else r.question),
        knobs, draws=[d for _ in live for d in range(knobs.k)])
    answers: dict[int, list[str | None]] = {id(r): [] for r in live}
    for r, c in zip(asked, replies):
        # A reply cut off at max_tokens still counts when it boxed an answer before rambling on (small models do).
        readable = c is not None and (not truncated(c) or "\\boxed" in c.text)
        answers[id(r)].append(stated_answer(c.text) if readable else None)
    for r in live:
        if r.reason:  # a refused request leaves its question without k answers
            continue
        a = answers[id(r)]
        groups = vote(a)
        sizes = [len(g) for g in groups]
        r.steps.append({"step": "vote", "answers": a, "groups": sizes})
        readable = sum(sizes)
        if readable < 2:
            r.reject(f"only {readable} of {knobs.k} answers readable")
        elif sizes[0] == readable and readable == knobs.k:
            r.reject(f"all {knobs.k} answers agree: too easy")
        elif sizes[0] == 1:
            r.reject(f"all {readable} readable answers differ")
        elif len(sizes) > 1 and sizes[1] == sizes[0]:
            r.reject(f"the two largest groups tie at {sizes[0]} of {knobs.k}")
        elif sizes[0] <= knobs.min_share * knobs.k:
            # Measured with a weak teacher: 2-of-5 pluralities were right 1 time in 51 (bench/README.md).
            r.reject(f"the largest group has {sizes[0]} of {knobs.k} answers, not more than {knobs.min_share:.0%}")
        else:
            r.answer = a[groups[0][0]]
            verdict = {"name": "plurality", "verdict": "pass", "votes": sizes[0], "k": knobs.k}
            if r.seed.answer:
                verdict["matches_exact"] = answers_equal(r.answer, r.seed.answer)
            r.keep(verdict)
    return live


def qa(teacher: Teacher, seeds: Sequence[Seed], knobs: Knobs = Knobs()) -> list[Record]:
    """Passage -> question/answer pairs on its reasoning steps, kept when grounded in the passage."""
    base = _fresh("qa", seeds)
    replies = ask(teacher, base, "extract", lambda r: (
        f"<passage>\n{r.seed.text}\n</passage>\n\nFind the reasoning steps in this passage: what follows from "
        "what. Turn each key step into a question whose answer the passage supports, in this layout:\n\n"
        "Question: <the question>\nAnswer: <the answer, with its reason>"), knobs)
    out = []
    for r, c in zip(base, replies):
        if c is None:
            out.append(r)
            continue
        pairs = parse_qa(c.text)
        if truncated(c) and pairs:
            pairs = pairs[:-1]
        if not pairs:
            out.append(r.reject("no complete 'Question:/Answer:' pair in the reply"))
            continue
        for j, (q, a) in enumerate(pairs):
            x = Record("qa", r.seed, question=q, solution=a, answer=a, steps=[*r.steps, {"pair": j}], reply=r.reply)
            g = grounding(a, r.seed.text)
            if g >= knobs.grounding:
                out.append(x.keep({"name": "grounding", "verdict": "pass", "share": round(g, 3)}))
            else:
                out.append(x.reject(f"answer not grounded in the passage ({g:.0%} of its words occur there, "
                                    f"need {knobs.grounding:.0%})"))
    return out


WORKFLOWS: dict[str, Callable[..., list[Record]]] = {
    "rewrite": rewrite, "revise": revise, "reverse_code": reverse_code, "plurality": plurality, "qa": qa}
# Which seeds each workflow starts from (phiforge.data.seed_texts).
SEED_KIND = {"rewrite": "passages", "revise": "passages", "qa": "passages", "reverse_code": "code",
             "plurality": "questions"}
