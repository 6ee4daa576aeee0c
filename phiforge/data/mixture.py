"""The pretraining mixture (Phi-4 Table 5): each source's share of the token budget, its epochs, and an exact,
reproducible token stream that realises them.

    epochs(source) = share x budget / unique tokens(source)

The budget is what pretraining will consume (steps x tokens per step), so the stream is exactly one pass of the
training loop: every source contributes `round(share x budget)` tokens (largest remainders, so the counts sum to the
budget), made of whole passes over its documents in a seeded order per pass plus a seeded part of one more pass,
the last document cut where the source's count is reached. The same recipe and data give the same stream.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from phiforge.errors import PhiforgeError


@dataclass(frozen=True)
class SourcePlan:
    source: str
    share: float
    unique_tokens: int
    planned_tokens: int
    epochs: float
    max_epochs: float | None

    @property
    def warning(self) -> str | None:
        if self.max_epochs is not None and self.epochs > self.max_epochs:
            return (f"{self.source} would be repeated {self.epochs:.1f} times, more than mixture.max_epochs."
                    f"{self.source} = {self.max_epochs:g}: add unique {self.source} data or lower its share")
        return None


def plan(shares: dict[str, float], unique_tokens: dict[str, int], budget: int,
         max_epochs: dict[str, float] | None = None) -> list[SourcePlan]:
    """Tokens and epochs per source for a budget. Shares are weights (normalised here); a source with a share but
    no tokens is an error, since no amount of repetition can realise it."""
    if budget <= 0:
        raise PhiforgeError(f"the mixture needs a positive token budget, got {budget}")
    total = sum(shares.values())
    names = sorted(s for s, w in shares.items() if w > 0)
    for s in names:
        if unique_tokens.get(s, 0) <= 0:
            raise PhiforgeError(f"mixture.shares.{s} is {shares[s]:g} but source {s!r} has no documents "
                                f"(after filtering and decontamination); set its share to 0 or give it data")
    exact = {s: shares[s] / total * budget for s in names}
    counts = {s: math.floor(x) for s, x in exact.items()}
    for s in sorted(names, key=lambda s: (counts[s] - exact[s], s))[: budget - sum(counts.values())]:
        counts[s] += 1  # largest remainders first: the counts sum to the budget exactly
    max_epochs = max_epochs or {}
    return [SourcePlan(s, shares[s] / total, unique_tokens[s], counts[s], counts[s] / unique_tokens[s],
                       max_epochs.get(s)) for s in names]


def source_stream(docs: list[np.ndarray], n_tokens: int, seed: int, source: str) -> np.ndarray:
    """`n_tokens` tokens of a source: whole passes over its documents, each pass in its own seeded order."""
    if n_tokens == 0:
        return np.zeros(0, docs[0].dtype if docs else np.int32)
    lengths = np.array([len(d) for d in docs])
    unique = int(lengths.sum())
    salt = zlib.crc32(source.encode())
    parts, have, epoch = [], 0, 0
    while have < n_tokens:
        order = np.random.default_rng([seed, salt, epoch]).permutation(len(docs))
        if have + unique <= n_tokens:
            parts += [docs[i] for i in order]
            have += unique
        else:
            need = n_tokens - have
            ends = np.cumsum(lengths[order])
            k = int(np.searchsorted(ends, need))  # the document during which the count is reached
            parts += [docs[i] for i in order[:k]]
            parts.append(docs[order[k]][: need - (int(ends[k - 1]) if k else 0)])
            have = n_tokens
        epoch += 1
    return np.concatenate(parts)


def build_stream(docs: dict[str, list[np.ndarray]], plans: list[SourcePlan], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, source index per token) with exactly each plan's tokens, sources one after another in plan order;
    the training loop's per-epoch window shuffle interleaves them."""
    tokens = [source_stream(docs[p.source], p.planned_tokens, seed, p.source) for p in plans]
    ids = [np.full(len(t), k, np.uint8) for k, t in enumerate(tokens)]
    return np.concatenate(tokens), np.concatenate(ids)


def realised(source_ids: np.ndarray, windows: np.ndarray, seq_len: int, n_sources: int) -> np.ndarray:
    """Tokens per source over the input positions of the given windows (window i = positions i*seq_len ...
    (i+1)*seq_len - 1; a window may repeat): what training actually read, counted per source."""
    n = (len(source_ids) - 1) // seq_len
    per_window = np.zeros((n, n_sources), np.int64)
    rows = np.repeat(np.arange(n), seq_len)
    np.add.at(per_window, (rows, source_ids[: n * seq_len].astype(np.int64)), 1)
    return np.bincount(windows, minlength=n) @ per_window


def plan_table(plans: list[SourcePlan], budget: int) -> str:
    lines = [f"mixture plan for {budget:,} training tokens:",
             f"  {'source':<12} {'share':>6} {'unique tokens':>14} {'planned tokens':>15} {'epochs':>7}"]
    for p in plans:
        lines.append(f"  {p.source:<12} {p.share:>6.1%} {p.unique_tokens:>14,} {p.planned_tokens:>15,} "
                     f"{p.epochs:>7.2f}")
    lines += [f"  WARNING: {p.warning}" for p in plans if p.warning]
    return "\n".join(lines)


def plan_json(plans: list[SourcePlan]) -> list[dict]:
    return [{**asdict(p), "epochs": round(p.epochs, 4), "warning": p.warning} for p in plans]
