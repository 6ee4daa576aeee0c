"""The fused head + cross-entropy of post-training (phiforge/train/linear_ce.py) against the plain composite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phiforge.train.linear_ce import linear_cross_entropy


def reference(hidden, weight, targets, cap=None):
    z = hidden @ weight.T
    if cap is not None:
        z = torch.tanh(z / cap) * cap
    return F.cross_entropy(z, targets, reduction="sum")


def grads(fn, hidden, weight, targets, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets, **kw)
    (3.0 * loss).backward()  # a scaled upstream gradient must scale both gradients
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("cap", [None, 2.0])
def test_loss_and_gradients_match_the_composite_over_ragged_chunks(cap):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(37, 16, generator=g), torch.randn(301, 16, generator=g)
    targets = torch.randint(0, 301, (37,), generator=g)
    want = grads(reference, hidden, weight, targets, cap=cap)
    got = grads(linear_cross_entropy, hidden, weight, targets, cap=cap, rows=8)  # 5 chunks, the last of 5 rows
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_only_the_named_rows_get_a_weight_gradient():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(20, 8, generator=g), torch.randn(50, 8, generator=g)
    targets = torch.randint(0, 50, (20,), generator=g)
    _, dh, dw = grads(linear_cross_entropy, hidden, weight, targets, grad_rows=torch.tensor([3, 41]), rows=7)
    _, want_dh, want_dw = grads(reference, hidden, weight, targets)
    assert torch.allclose(dh, want_dh, atol=1e-5)
    assert torch.allclose(dw[[3, 41]], want_dw[[3, 41]], atol=1e-5)
    dw[[3, 41]] = 0
    assert not dw.any()


def test_a_frozen_weight_gets_no_gradient_and_bf16_stays_close():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(12, 32, generator=g, requires_grad=True)
    weight = torch.randn(200, 32, generator=g)
    targets = torch.randint(0, 200, (12,), generator=g)
    loss = linear_cross_entropy(hidden.bfloat16(), weight, targets, rows=5)
    loss.backward()
    assert hidden.grad is not None and weight.grad is None
    assert float(loss) == pytest.approx(float(reference(hidden.detach(), weight, targets)), rel=2e-2)
