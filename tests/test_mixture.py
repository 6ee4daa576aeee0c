"""The Table-5 mixture: plan arithmetic, exact and reproducible sampling, and realised shares through the training
loop's own window order."""

from __future__ import annotations

import numpy as np
import pytest

from phiforge.data import mixture
from phiforge.errors import PhiforgeError

SHARES = {"synthetic": 0.40, "web": 0.15, "web_rewrite": 0.15, "code": 0.20, "acquired": 0.10}


def _docs(seed: int) -> dict[str, list[np.ndarray]]:
    """Sources of very different sizes and document lengths, each document's tokens tagged with its source."""
    rng = np.random.default_rng(seed)
    sizes = {"synthetic": (3000, 40, 120), "web": (300, 200, 2000), "web_rewrite": (80, 100, 600),
             "code": (150, 300, 3000), "acquired": (20, 1000, 5000)}
    return {s: [np.full(rng.integers(lo, hi), k * 1000 + i % 1000, np.int32) for i in range(n)]
            for k, (s, (n, lo, hi)) in enumerate(sizes.items())}


def test_plan_follows_epochs_equal_share_times_budget_over_unique_tokens():
    unique = {"synthetic": 290, "web": 1300, "web_rewrite": 290, "code": 820, "acquired": 580}  # Table 5, in B
    plans = {p.source: p for p in mixture.plan(SHARES, unique, 10_000, {"web": 1.0})}
    assert sum(p.planned_tokens for p in plans.values()) == 10_000
    # Table 5's epochs: 13.8, 1.2, 5.2, 2.4, 1.7
    got = {s: round(p.epochs, 1) for s, p in plans.items()}
    assert got == {"synthetic": 13.8, "web": 1.2, "web_rewrite": 5.2, "code": 2.4, "acquired": 1.7}
    assert "web would be repeated 1.2 times" in plans["web"].warning and plans["code"].warning is None
    assert "WARNING: web would be repeated" in mixture.plan_table(list(plans.values()), 10_000)


def test_a_source_with_a_share_but_no_data_is_an_error():
    with pytest.raises(PhiforgeError, match="mixture.shares.code is 0.2 but source 'code' has no documents"):
        mixture.plan(SHARES, {"synthetic": 10, "web": 10, "web_rewrite": 10, "acquired": 10}, 100)


@pytest.mark.parametrize("budget", [50_000, 1_000_003])
def test_stream_has_exactly_the_planned_tokens_and_is_reproducible(budget):
    docs = _docs(0)
    unique = {s: int(sum(map(len, d))) for s, d in docs.items()}
    plans = mixture.plan(SHARES, unique, budget)
    tokens, sources = mixture.build_stream(docs, plans, seed=3)
    assert len(tokens) == budget
    for k, p in enumerate(plans):
        owner = tokens[sources == k] // 1000
        assert (sources == k).sum() == p.planned_tokens and (owner == list(docs).index(p.source)).all()
    again, _ = mixture.build_stream(docs, plans, seed=3)
    other, _ = mixture.build_stream(docs, plans, seed=4)
    assert np.array_equal(tokens, again) and not np.array_equal(tokens, other)


def test_repeated_source_uses_every_document_once_per_pass():
    docs = [np.full(n, i, np.int32) for i, n in enumerate([5, 7, 11, 13])]
    out = mixture.source_stream(docs, 2 * 36 + 10, seed=0, source="x")
    first, second = out[:36], out[36:72]
    assert sorted(np.bincount(first)) == sorted(np.bincount(second)) == [5, 7, 11, 13]
    assert len(out) == 82
