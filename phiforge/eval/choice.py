"""Multiple choice: scoring options by log-likelihood or reading a generated answer, with AMC points.

Three ways to make a model choose among options:

- `loglik` (cloze): the prompt is the bare question (as an exercise for base models, a chat turn for chat models) and
  each option is scored as the continuation `The answer is \\boxed{<option>}.`; the options are not shown. Its score
  is the summed log-probability of the continuation's tokens (`sum`, the probability of the whole option) or their
  mean (`mean`, which does not favour options that tokenise short). The options' probabilities are the softmax of
  those scores over the options; the model leaves the question blank when the top one is below `blank_below`.
  With AMC points the default 0.25 is the break-even: answering with confidence p is worth 6p on average against
  1.5 for a blank, so a calibrated model should answer exactly when p > 1.5 / 6.
- `solved_loglik`: as `loglik`, but after the model's own greedy solution, cut just before its final answer line:
  the options compete for the slot where the model wrote its answer. A model that reasons step by step cannot
  be judged by `loglik`, which asks it to state the answer before doing any work.
- `generate`: the model's greedy answer is read as an option: a letter A-E, or a value equal to an option's.
  `\\boxed{blank}`, no final answer at all, or a value that matches no option leaves the question blank, as a
  student whose own result is not among the choices would. With `show_options` the prompt lists the options as
  (A)..(E), states the scoring and asks for `\\boxed{letter}` or `\\boxed{blank}` (Phi-4's AMC protocol); without
  it the model sees only the question, for models trained on no multiple-choice format.

AMC scoring: 6 points per correct answer, 1.5 per blank, 0 per wrong answer (a 25-question test is out of 150).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from phiforge.answers import answers_equal, extract_answer
from phiforge.data.render import BASE_STYLES, first_answer, question_prompt
from phiforge.errors import PhiforgeError

LETTERS = "ABCDE"
AMC_CORRECT, AMC_BLANK, AMC_WRONG = 6.0, 1.5, 0.0
BLANK_BREAK_EVEN = AMC_BLANK / AMC_CORRECT  # answer only when P(correct) is above this
MODES = ("loglik", "solved_loglik", "generate")
NORMALIZATIONS = ("sum", "mean")


def continuation(option: str, style: str = "chat") -> str:
    """An option written where the model's training put its final answer: the answer line of a worked solution,
    or, after answer-only Q&A (`qa`), the bare answer."""
    return option if style == "qa" else f"The answer is \\boxed{{{option}}}."


def generate_question(question: str, options: Sequence[str]) -> str:
    listed = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return (f"{question}\nOptions: {listed}\nScoring: 6 points for a correct answer, 1.5 for a blank, 0 for a wrong "
            f"one. Give the letter of your choice as \\boxed{{A}}, or \\boxed{{blank}} to leave it blank.")


def option_probs(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


def choose(sums: Sequence[float], n_tokens: Sequence[int], normalize: str = "sum",
           blank_below: float = 0.0) -> tuple[int | None, list[float]]:
    """The chosen option's index (None: blank) and every option's probability, from each option's summed
    log-probability and token count."""
    if normalize not in NORMALIZATIONS:
        raise PhiforgeError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if not sums or len(sums) != len(n_tokens) or min(n_tokens) < 1:
        raise PhiforgeError(f"need one score and a positive token count per option, got {list(sums)}, "
                            f"{list(n_tokens)}")
    scores = list(sums) if normalize == "sum" else [s / n for s, n in zip(sums, n_tokens)]
    probs = option_probs(scores)
    best = max(range(len(probs)), key=probs.__getitem__)  # ties go to the earliest option
    return (None if probs[best] < blank_below else best), probs


def read_choice(output: str, options: Sequence[str]) -> tuple[int | None, str | None]:
    """The option a generated answer names (None: blank, under the module docstring's rule) and the raw answer."""
    raw = extract_answer(output)
    if raw is None:
        return None, None
    text = raw.strip().strip("()").strip()
    if text.upper() in LETTERS[: len(options)] and len(text) == 1:
        return LETTERS.index(text.upper()), raw
    for i, o in enumerate(options):
        if answers_equal(text, o):
            return i, raw
    return None, raw


def amc_points(chosen: int | None, correct: int) -> float:
    if chosen is None:
        return AMC_BLANK
    return AMC_CORRECT if chosen == correct else AMC_WRONG


def summarize(chosen: Sequence[int | None], correct: Sequence[int]) -> dict:
    """Counts, AMC points, and points scaled to a 25-question test (max 150), comparable to Phi-4's AMC figure."""
    n = len(correct)
    if n == 0 or len(chosen) != n:
        raise PhiforgeError(f"need one choice per question, got {len(chosen)} choices for {n} questions")
    points = [amc_points(c, k) for c, k in zip(chosen, correct)]
    right = sum(c == k for c, k in zip(chosen, correct))
    blank = sum(c is None for c in chosen)
    mean = sum(points) / n
    sd = math.sqrt(sum((p - mean) ** 2 for p in points) / max(1, n - 1))
    return {"n": n, "correct": right, "blank": blank, "wrong": n - right - blank, "points": sum(points),
            "max_points": AMC_CORRECT * n, "per_150": 25 * mean, "per_150_stderr": 25 * sd / math.sqrt(n),
            "accuracy": right / n}


def prompt_ids(engine, question: str, style: str) -> list[int]:
    """A question as a chat turn (`chat`) or framed as the pretraining corpus frames one (`completion`: an exercise;
    `qa`: answer-only Q&A)."""
    if style == "chat":
        return engine.chat_prompt(question)
    if style in BASE_STYLES:
        return engine.encode(question_prompt(question, style))
    raise PhiforgeError(f"style must be chat, {' or '.join(BASE_STYLES)}, got {style!r}")


def solve(engine, items: Sequence, *, style: str, show_options: bool, max_new_tokens: int, batch_size: int,
          stops: Sequence[str] = ()) -> list[str]:
    """Each item's greedy answer text, from the question alone or with its options listed (generate_question)."""
    prompts = [prompt_ids(engine, generate_question(it.question, it.options) if show_options else it.question, style)
               for it in items]
    texts = engine.complete(prompts, stops=stops, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0,
                            batch_size=batch_size)
    if style != "chat":
        texts = [first_answer(t).rstrip() for t in texts]
    return texts


def answer_slot(text: str) -> str:
    """A solution cut just before its final answer line (`The answer is \\boxed{`, else the last `\\boxed{`), so
    the options can be scored in the slot where the model put its own answer; no answer at all: the whole text."""
    cut = text.rfind("\\boxed{")
    if cut < 0:
        return text.rstrip()
    lead = text[:cut].rstrip()
    return lead[: -len("The answer is")].rstrip() if lead.endswith("The answer is") else lead


def run(engine, items: Sequence, *, style: str = "chat", mode: str = "loglik", normalize: str = "sum",
        blank_below: float = BLANK_BREAK_EVEN, max_new_tokens: int = 256, batch_size: int = 32,
        stops: Sequence[str] = (), show_options: bool = True, texts: Sequence[str] | None = None,
        ) -> tuple[dict, list[dict]]:
    """Score multiple-choice items (each with `options` and the right letter in `answers`) on an engine with
    `encode`, `chat_prompt`, `encode_continuation`, `logprobs` and `complete`: AMC points and per-item records.

    `texts`: greedy answers already made by `solve` (for `solved_loglik` and `generate`), so both modes can share
    one generation."""
    if mode not in MODES:
        raise PhiforgeError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= blank_below <= 1.0:
        raise PhiforgeError(f"blank_below must be in [0, 1], got {blank_below}")
    for it in items:
        if not 2 <= len(it.options) <= len(LETTERS) or len(it.answers) != 1 or it.answers[0] not in LETTERS[: len(it.options)]:
            raise PhiforgeError(f"choice item {it.id}: needs 2-{len(LETTERS)} options and one right letter among "
                                f"them, got options={it.options!r}, answers={it.answers!r}")
    correct = [LETTERS.index(it.answers[0]) for it in items]
    if mode != "loglik" and texts is None:
        texts = solve(engine, items, style=style, show_options=show_options, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, stops=stops)
    records = []
    if mode in ("loglik", "solved_loglik"):
        # The completion prompt's trailing "Solution:" is followed by a space in the corpus; a chat reply starts bare.
        lead = " " if style != "chat" else ""
        prompts, conts, solved = [], [], []
        for i, it in enumerate(items):
            p = prompt_ids(engine, it.question, style)
            # Answer-only Q&A shows no work to condition on: there solved_loglik is loglik.
            work = answer_slot(texts[i]) if mode == "solved_loglik" and style != "qa" else ""
            if work:
                p = p + engine.encode_continuation(lead + work.lstrip() if lead else work)
            solved.append(work)
            for o in it.options:
                prompts.append(p)
                conts.append(engine.encode_continuation((" " if work else lead) + continuation(o, style)))
        scored = engine.logprobs(prompts, conts, batch_size=batch_size)
        at = 0
        for i, (it, k) in enumerate(zip(items, correct)):
            mine = scored[at : at + len(it.options)]
            at += len(it.options)
            pick, probs = choose([s for s, _ in mine], [n for _, n in mine], normalize, blank_below)
            detail = {"logprobs": [s for s, _ in mine], "tokens": [n for _, n in mine], "probs": probs}
            if mode == "solved_loglik":
                detail["solution"] = solved[i]
            records.append(_record(it, k, pick, mode, style, detail))
    else:
        for it, k, text in zip(items, correct, texts):
            pick, raw = read_choice(text, it.options)
            records.append(_record(it, k, pick, mode, style, {"output": text, "extracted": raw}))
    summary = summarize([r["chosen_index"] for r in records], correct)
    summary.update(mode=mode, style=style, **({"normalize": normalize, "blank_below": blank_below}
                                              if mode != "generate" else {}))
    return summary, records


def _record(item, correct: int, pick: int | None, mode: str, style: str, detail: dict) -> dict:
    return {"id": item.id, "question": item.question, "options": list(item.options), "answer": LETTERS[correct],
            "mode": mode, "style": style, **detail, "chosen_index": pick,
            "chosen": "blank" if pick is None else LETTERS[pick], "points": amc_points(pick, correct)}
