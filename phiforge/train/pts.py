"""Pivotal Token Search (Phi-4 §4.3, Fig. 4): find the single tokens of a solution that swing p(success), and
turn each into a one-token DPO pair.

p(success | query + prefix) is estimated by sampling completions of the prefix from the policy and checking each
with an oracle. Those rollouts are the whole cost of the search, hence two modes:

* fixed: n rollouts per prefix and point estimates (the published recipe's shape, e.g. n = 20).
* adaptive: rollouts in small batches, stopping as soon as a confidence bound answers the question the search
  actually asks (is |p(b) - p(a)| >= p_gap?), up to a budget per prefix; and every rollout is reused. A rollout
  drawn from prefix a whose first tokens reproduce the solution up to a longer prefix b is, from there on, an
  exact draw from b, because sampling is Markov in the prefix. That needs the same length budget from b, so the
  budget is absolute: a response holds at most `max_response_tokens` tokens, whichever prefix it was drawn from.

Bounds of the adaptive mode. Each p gets Wilson score limits l, u, each one-sided at `confidence`.
d = p(b) - p(a) gets Newcombe's hybrid score limits (Newcombe 1998, method 10):
    [d - sqrt((p_b - l_b)^2 + (u_a - p_a)^2),  d + sqrt((u_b - p_b)^2 + (p_a - l_a)^2)].
It assumes independent samples; shared rollouts correlate the two estimates positively, which only shrinks the
variance of d, so the interval stays conservative. A second bound covers spans the policy almost always follows:
p(a) = pi p(b) + (1 - pi) q, with pi the chance that a rollout from a reproduces the solution up to b, so
|d| <= 1 - pi, bounded by the Wilson upper limit of 1 - pi over a's rollouts. |d| >= p_gap is decided when one limit
lies beyond +p_gap or -p_gap (a one-sided test); |d| < p_gap when the lower limit is above -p_gap and the upper
below +p_gap (two one-sided tests, TOST, the standard equivalence test: each at level alpha gives level alpha), or
when the 1 - pi bound is below p_gap. Hence one-sided limits: z = Phi^-1(confidence), 1.645 at 0.95. Every look
uses that nominal level, so with up to max_rollouts / batch looks per prefix a decision can be wrong more often
than 1 - confidence (at most looks x (1 - confidence) by a union bound). Out of budget and still undecided, the
point estimates decide, as in fixed mode; `undecided` counts how often that happened.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, Protocol

import torch
from torch import nn

from phiforge.answers import answers_equal, extract_answer
from phiforge.config import PTSConfig
from phiforge.data.corpus import read_column
from phiforge.errors import PhiforgeError
from phiforge.lm.generate import generate, sample_from_prefix
from phiforge.lm.logprobs import token_logps
from phiforge.rundir import atomic_write_json, atomic_write_text
from phiforge.train.optim import device
from phiforge.train.sft import load_policy

Prefix = tuple[int, ...]


class Oracle(Protocol):
    def check(self, completion_text: str) -> bool: ...


class MathOracle:
    """Success when the response's final answer equals the gold answer."""

    def __init__(self, gold: str):
        self.gold = gold

    def check(self, completion_text: str) -> bool:
        return answers_equal(extract_answer(completion_text), self.gold)


@dataclass(frozen=True)
class Rollout:
    tokens: Prefix  # the prefix it was sampled from, then the sampled tokens, stop token kept
    origin: int  # length of that prefix
    success: bool


@dataclass(frozen=True)
class PivotalToken:
    prefix: Prefix  # solution tokens before the pivotal one
    token: int
    p_before: float
    p_after: float

    @property
    def position(self) -> int:
        return len(self.prefix)


def wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; [0, 1] without data."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


class SuccessEstimator:
    """p(success | query + prefix) for one query, from rollouts of the policy judged by `oracle`.

    Prefixes are tuples of response tokens. Estimates are memoised: rollouts are only ever added, never redrawn.
    A prefix that ends in a stop token, or already holds `max_response_tokens` tokens, is complete, and the oracle
    judges it directly without any rollout. `spent` counts rollouts; `calls` logs (prefix, n) for each sampling call.
    """

    def __init__(self, model: nn.Module, query_ids: Sequence[int], oracle: Oracle, *,
                 decode: Callable[[list[int]], str], stop_ids: Sequence[int], max_response_tokens: int,
                 mode: Literal["adaptive", "fixed"] = "adaptive", n_fixed: int = 20, batch: int = 8,
                 max_rollouts: int = 64, confidence: float = 0.95, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0):
        if mode not in ("adaptive", "fixed"):
            raise PhiforgeError(f"PTS mode must be 'adaptive' or 'fixed', got {mode!r}")
        if min(n_fixed, batch, max_rollouts, max_response_tokens) < 1 or batch > max_rollouts:
            raise PhiforgeError(f"PTS needs n_fixed, batch, max_rollouts, max_response_tokens >= 1 and "
                                f"batch <= max_rollouts; got {n_fixed}, {batch}, {max_rollouts}, {max_response_tokens}")
        if not 0.5 <= confidence < 1:
            raise PhiforgeError(f"PTS confidence must be in [0.5, 1), got {confidence}")
        if not query_ids:
            raise PhiforgeError("PTS query is empty")
        self.model, self.query, self.oracle, self.decode = model, list(query_ids), oracle, decode
        self.stop_ids, self.max_len, self.mode = frozenset(stop_ids), max_response_tokens, mode
        self.n_fixed, self.batch, self.max_rollouts = n_fixed, batch, max_rollouts
        self.z = NormalDist().inv_cdf(confidence)  # one-sided: see the module docstring
        self.temperature, self.top_p = temperature, top_p
        self.seed = seed * 1_000_003 + zlib.crc32(repr(self.query).encode())
        self.rollouts: list[Rollout] = []
        self.calls: list[tuple[Prefix, int]] = []
        self.spent = 0
        self.undecided = 0
        self._own: dict[Prefix, int] = {}
        self._complete: dict[Prefix, bool] = {}

    # -- data ------------------------------------------------------------------------------------------------
    def complete(self, prefix: Prefix) -> bool:
        return len(prefix) >= self.max_len or (len(prefix) > 0 and prefix[-1] in self.stop_ids)

    def _judge(self, tokens: Prefix) -> bool:
        return bool(self.oracle.check(self.decode(list(tokens))))

    def _sample(self, prefix: Prefix, n: int) -> None:
        own = self._own.get(prefix, 0)
        # Seeded by query, prefix and draw count, so an estimate does not depend on the order the search asks.
        gen = torch.Generator(device=next(self.model.parameters()).device)
        gen.manual_seed((self.seed + zlib.crc32(repr(prefix).encode()) * 65_537 + own) % 2**63)
        outs = sample_from_prefix(self.model, self.query + list(prefix), n, max_new_tokens=self.max_len - len(prefix),
                                  stop_ids=sorted(self.stop_ids), temperature=self.temperature, top_p=self.top_p,
                                  generator=gen, keep_stop=True)
        for out in outs:
            tokens = prefix + tuple(out)
            self.rollouts.append(Rollout(tokens, len(prefix), self._judge(tokens)))
        self._own[prefix] = own + n
        self.spent += n
        self.calls.append((prefix, n))

    def samples(self, prefix: Sequence[int]) -> list[Rollout]:
        """Rollouts that are draws from `prefix`: its own in fixed mode, all that pass through it in adaptive."""
        prefix = tuple(prefix)
        k = len(prefix)
        if self.mode == "fixed":
            return [r for r in self.rollouts if r.origin == k and r.tokens[:k] == prefix]
        return [r for r in self.rollouts if r.origin <= k < len(r.tokens) and r.tokens[:k] == prefix]

    def _counts(self, prefix: Prefix) -> tuple[int, int]:
        rs = self.samples(prefix)
        return sum(r.success for r in rs), len(rs)

    def _bounds(self, prefix: Prefix) -> tuple[float, float, float]:
        """(point, lower, upper); a complete prefix is known exactly."""
        if self.complete(prefix):
            if prefix not in self._complete:
                self._complete[prefix] = self._judge(prefix)
            v = float(self._complete[prefix])
            return v, v, v
        s, n = self._counts(prefix)
        lo, hi = wilson(s, n, self.z)
        return (s / n if n else 0.5), lo, hi

    def _budget_left(self, prefix: Prefix) -> int:
        if self.complete(prefix):
            return 0
        return (self.n_fixed if self.mode == "fixed" else self.max_rollouts) - self._own.get(prefix, 0)

    # -- questions -------------------------------------------------------------------------------------------
    def p(self, prefix: Sequence[int]) -> float:
        """Point estimate, sampling first when the prefix has fewer draws than one estimate needs."""
        prefix = tuple(prefix)
        need = self.n_fixed if self.mode == "fixed" else self.batch
        missing = 0 if self.complete(prefix) else min(need - self._counts(prefix)[1], self._budget_left(prefix))
        if missing > 0:
            self._sample(prefix, missing)
        return self._bounds(prefix)[0]

    def in_range(self, prefix: Sequence[int], low: float, high: float) -> bool:
        """Whether low <= p(prefix) <= high: the question gate, decided like `differs`."""
        prefix = tuple(prefix)
        p = self.p(prefix)
        while self.mode == "adaptive":
            p, lo, hi = self._bounds(prefix)
            if low <= lo and hi <= high:
                return True
            if hi < low or lo > high:
                return False
            if self._budget_left(prefix) <= 0:
                self.undecided += 1
                break
            self._sample(prefix, min(self.batch, self._budget_left(prefix)))
        return low <= p <= high

    def differs(self, a: Sequence[int], b: Sequence[int], p_gap: float) -> bool:
        """Whether |p(b) - p(a)| >= p_gap."""
        a, b = tuple(a), tuple(b)
        if self.mode == "fixed":
            return abs(self.p(b) - self.p(a)) >= p_gap
        while (verdict := self._decide(a, b, p_gap)) is None:
            side = self._next_side(a, b)
            if side is None:
                self.undecided += 1
                return abs(self._bounds(b)[0] - self._bounds(a)[0]) >= p_gap
            self._sample(side, min(self.batch, self._budget_left(side)))
        return verdict

    def _decide(self, a: Prefix, b: Prefix, p_gap: float) -> bool | None:
        (pa, la, ua), (pb, lb, ub) = self._bounds(a), self._bounds(b)
        d = pb - pa
        lo, hi = d - math.hypot(pb - lb, ua - pa), d + math.hypot(ub - pb, pa - la)
        if lo >= p_gap or hi <= -p_gap:
            return True
        if -p_gap < lo and hi < p_gap:
            return False
        if len(a) < len(b) and b[: len(a)] == a and not self.complete(a):
            from_a = self.samples(a)
            leave = sum(r.tokens[: len(b)] != b for r in from_a)
            if wilson(leave, len(from_a), self.z)[1] < p_gap:
                return False
        return None

    def _next_side(self, a: Prefix, b: Prefix) -> Prefix | None:
        # The less certain side; on a tie the shorter prefix, whose rollouts may also pass through the longer one.
        open_ = [x for x in (a, b) if self._budget_left(x) > 0]
        if not open_:
            return None
        return max(open_, key=lambda x: (self._bounds(x)[2] - self._bounds(x)[1], -len(x)))


def split_point(logprobs: Sequence[float]) -> int:
    """Where to cut a segment: the boundary (1 .. n-1) whose cumulative -log p is closest to half the total.

    A low-probability token carries most of a segment's total, so the cut lands next to it and it is isolated
    within a split or two. The small floor per token splits a run of near-certain tokens at its middle.
    """
    if len(logprobs) < 2:
        raise ValueError("a segment needs at least two tokens to split")
    costs = [max(-float(lp), 0.0) + 1e-5 for lp in logprobs]
    half, cum, best, best_gap = sum(costs) / 2, 0.0, 1, math.inf
    for s in range(1, len(costs)):
        cum += costs[s - 1]
        if abs(cum - half) < best_gap:
            best, best_gap = s, abs(cum - half)
    return best


def solution_logprobs(model: nn.Module, query_ids: Sequence[int], solution_ids: Sequence[int]) -> list[float]:
    """Log-prob of each solution token under the policy, from one forward pass."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return token_logps(model, list(query_ids), [list(solution_ids)], pad_id=0)[0][0].tolist()
    finally:
        model.train(was_training)


def pivotal_token_search(query_ids: Sequence[int], solution_ids: Sequence[int], estimator: SuccessEstimator,
                         p_gap: float = 0.2, token_logprobs: Sequence[float] | None = None) -> list[PivotalToken]:
    """Fig. 4's Subdivide over the solution; every single-token segment whose p moves by >= p_gap."""
    if list(query_ids) != estimator.query:
        raise ValueError("query_ids differ from the estimator's query")
    sol = tuple(solution_ids)
    if not sol:
        return []
    if token_logprobs is None:
        token_logprobs = solution_logprobs(estimator.model, query_ids, sol)
    if len(token_logprobs) != len(sol):
        raise ValueError(f"{len(token_logprobs)} log-probs for {len(sol)} solution tokens")
    segments, stack = [], [(0, len(sol))]
    while stack:  # an explicit stack: a long, lopsided solution would recurse deeper than Python allows
        a, b = stack.pop()
        if b - a <= 1 or not estimator.differs(sol[:a], sol[:b], p_gap):
            segments.append((a, b))
            continue
        s = a + split_point(token_logprobs[a:b])
        stack += [(s, b), (a, s)]  # left popped first, so segments come out in order
    return [PivotalToken(sol[:a], sol[a], estimator.p(sol[:a]), estimator.p(sol[:b]))
            for a, b in segments if b - a == 1 and estimator.differs(sol[:a], sol[:b], p_gap)]


def make_pairs(pivotal: Sequence[PivotalToken], estimator: SuccessEstimator, *, p_gap: float = 0.2,
               max_alternatives: int = 3) -> list[dict]:
    """One-token DPO pairs (footnote 7): the pivotal token against a first token of the prefix's own rollouts
    whose success moves the other way; pivotal tokens without such an alternative give no pair.

    Alternatives are tried most frequent first, at most `max_alternatives`, stopping at one that moves p by
    p_gap the other way; otherwise the one that moves it furthest wins.
    """
    pairs = []
    for pt in pivotal:
        spent = estimator.spent
        raises = pt.p_after > pt.p_before
        k = len(pt.prefix)
        firsts = Counter(r.tokens[k] for r in estimator.samples(pt.prefix))
        best: tuple[float, int, float] | None = None
        for alt in [t for t, _ in firsts.most_common() if t != pt.token][:max_alternatives]:
            p_alt = estimator.p(pt.prefix + (alt,))
            move = pt.p_before - p_alt if raises else p_alt - pt.p_before
            if move > 0 and (best is None or move > best[0]):
                best = (move, alt, p_alt)
            if move >= p_gap:
                break
        if best is None:
            continue
        _, alt, p_alt = best
        chosen, rejected = ((pt.token, pt.p_after), (alt, p_alt)) if raises else ((alt, p_alt), (pt.token, pt.p_after))
        pairs.append({
            "prompt_ids": estimator.query + list(pt.prefix), "chosen_ids": [chosen[0]], "rejected_ids": [rejected[0]],
            "position": k, "p_before": pt.p_before, "p_chosen": chosen[1], "p_rejected": rejected[1],
            "rollouts_for_pair": estimator.spent - spent, "rollouts_for_query": estimator.spent,
        })
    return pairs


def search_query(model: nn.Module, query_ids: Sequence[int], solutions: Sequence[Sequence[int]], oracle: Oracle, *,
                 decode: Callable[[list[int]], str], stop_ids: Sequence[int], cfg: PTSConfig = PTSConfig()) -> dict:
    """Gate one query, then search each of its solutions and build pairs, sharing one estimator (and p(query))."""
    est = SuccessEstimator(
        model, query_ids, oracle, decode=decode, stop_ids=stop_ids, mode=cfg.mode, n_fixed=cfg.n_fixed,
        batch=cfg.batch, max_rollouts=cfg.max_rollouts, confidence=cfg.confidence, temperature=cfg.temperature,
        top_p=cfg.top_p, seed=cfg.seed, max_response_tokens=max([cfg.max_response_tokens, *map(len, solutions)]))
    searched = est.in_range((), cfg.gate_low, cfg.gate_high)
    found: dict[tuple[Prefix, int], PivotalToken] = {}
    if searched:
        for sol in solutions:
            for pt in pivotal_token_search(query_ids, sol, est, cfg.p_gap):
                found.setdefault((pt.prefix, pt.token), pt)  # solutions sharing a prefix find it once
    pivotal = list(found.values())
    pairs = make_pairs(pivotal, est, p_gap=cfg.p_gap, max_alternatives=cfg.max_alternatives)
    return {"searched": searched, "p_query": est.p(()), "pivotal": pivotal, "pairs": pairs, "rollouts": est.spent,
            "undecided": est.undecided}


def summarize(results: Sequence[dict]) -> dict:
    """Totals over `search_query` results; rollouts_per_pivotal_token charges gated-out queries too."""
    rollouts = sum(r["rollouts"] for r in results)
    found = sum(len(r["pivotal"]) for r in results)
    return {
        "queries": len(results), "searched": sum(r["searched"] for r in results), "pivotal_tokens": found,
        "pairs": sum(len(r["pairs"]) for r in results), "rollouts": rollouts,
        "rollouts_per_pivotal_token": round(rollouts / found, 2) if found else None,
        "undecided": sum(r["undecided"] for r in results),
    }


def execute(recipe, run) -> dict:
    """Stage `pts`: mine single-token DPO pairs from the SFT policy's own solutions to the synth `pts` questions."""
    import json

    from tqdm import tqdm


    cfg = recipe.pts
    model, tok, _ = load_policy(recipe, run, "sft", "pts", train=False)  # phiforge's, or sft.init's transformers
    model.to(device()).eval()
    n = cfg.n_queries
    questions, answers = read_column(run, "pts", "question")[:n], read_column(run, "pts", "answer")[:n]
    ids, domains = read_column(run, "pts", "id")[:n], read_column(run, "pts", "domain")[:n]
    queries = [tok.chat_prompt(q) for q in questions]
    stop = tok.stop_ids
    k = cfg.solutions_per_query
    # T_full of Fig. 4: the policy's own solutions, sampled; a solution that stopped keeps its <|im_end|>.
    sampled = generate(model, [q for q in queries for _ in range(k)], max_new_tokens=cfg.max_response_tokens,
                       pad_id=tok.pad_id, stop_ids=stop, temperature=cfg.solution_temperature, seed=cfg.seed)
    results, lines = [], []
    bar = tqdm(range(len(queries)), desc="pts", unit="query", dynamic_ncols=True)
    for i in bar:
        solutions = []
        for s in sampled[i * k: (i + 1) * k]:
            s = s + [tok.im_end_id] if len(s) < cfg.max_response_tokens else s
            if s and s not in solutions:
                solutions.append(s)
        r = search_query(model, queries[i], solutions, MathOracle(answers[i]), decode=tok.decode, stop_ids=stop,
                         cfg=cfg)
        results.append(r)
        for pair in r["pairs"]:
            lines.append(json.dumps({
                "question_id": ids[i], "domain": domains[i], **pair,
                "prompt_text": tok.decode(pair["prompt_ids"], skip_special=False),
                "chosen_text": tok.decode(pair["chosen_ids"], skip_special=False),
                "rejected_text": tok.decode(pair["rejected_ids"], skip_special=False),
            }) + "\n")
        spent = sum(x["rollouts"] for x in results)
        bar.set_postfix(pairs=len(lines), rollouts=spent, refresh=False)
    out = run.stage_dir("pts")
    atomic_write_text(out / "pairs.jsonl", "".join(lines))
    summary = {**summarize(results), "mode": cfg.mode, "p_query": [round(r["p_query"], 3) for r in results]}
    atomic_write_json(out / "summary.json", summary)
    return {k: v for k, v in summary.items() if k != "p_query"}
