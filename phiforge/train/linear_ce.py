"""Summed cross-entropy of targets through an LM head, fused: logits, loss and both gradients a chunk of rows at a
time, so that [N, V] logits never exist whole and never need a recompute.

Ours because Gemma 3's 262,144-token head is most of a CPU SFT step, and the composite way (checkpointed chunks of
`head(h).log_softmax().gather()`, phiforge/lm/logprobs.py) runs each chunk's matmul twice and makes four more passes
over its logits (log-softmax, its backward, the gather's zero-filled gradient, a cast). Here each chunk is one
matmul, one exp pass and the two gradient matmuls, done in the forward; the backward only scales them (the loss is a
sum, so its gradient is linear in the incoming scalar). bench/posttrain_vs_trl.py measures it against that path and
against TRL.
"""

from __future__ import annotations

import torch

# Rows per chunk: 128 x 262,144 fp32 logits are 128 MB.
ROWS = 128


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, grad_rows, cap, rows):
        w = weight.to(hidden.dtype)
        dh = torch.empty_like(hidden)
        # d loss / d logits of every chunk, kept (in the matmul dtype) for one [V, d] weight-gradient matmul at the
        # end rather than a thin one per chunk; only the columns of `grad_rows` when just those rows train. Written
        # in place: a list joined at the end would hold them twice.
        keep = None
        if weight.requires_grad:
            keep = hidden.new_empty((hidden.shape[0], weight.shape[0] if grad_rows is None else len(grad_rows)),
                                    dtype=w.dtype)
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hidden.shape[0], rows):
            h, t = hidden[s : s + rows], targets[s : s + rows]
            z = (h @ w.T).float()
            if cap is not None:  # soft-capped logits cap * tanh(z / cap), and the tanh's derivative for the chain
                tanh = torch.tanh(z.div_(cap))
                z = tanh * cap
            # the log-sum-exp and softmax in place: five passes over the chunk, no temporary
            picked = z.gather(1, t[:, None]).squeeze(1)
            top = z.amax(dim=-1, keepdim=True)
            norm = z.sub_(top).exp_().sum(dim=-1, keepdim=True)
            total += (top.squeeze(1) + norm.log().squeeze(1) - picked).sum()
            g = z.div_(norm)  # softmax, then minus the one-hot
            g[torch.arange(len(t), device=g.device), t] -= 1.0
            if cap is not None:
                g.mul_(1.0 - tanh.square_())
            if keep is not None and grad_rows is None:
                g = keep[s : s + rows].copy_(g)
            else:
                g = g.to(w.dtype)
                if keep is not None:
                    keep[s : s + rows] = g[:, grad_rows]
            dh[s : s + rows] = g @ w
        dw = None if keep is None else keep.T @ hidden
        ctx.save_for_backward(dh, dw, grad_rows)
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        dh, dw, grad_rows = ctx.saved_tensors
        if dw is not None:
            dw = dw.to(ctx.weight_dtype, copy=True).mul_(grad)  # one [V, d] temporary, not two
            if grad_rows is not None:  # zeros but for the rows that train
                dw = dw.new_zeros(ctx.weight_shape).index_copy_(0, grad_rows, dw)
        return dh * grad.to(dh.dtype), dw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         grad_rows: torch.Tensor | None = None, cap: float | None = None,
                         rows: int = ROWS) -> torch.Tensor:
    """sum_i -log softmax(cap(hidden[i] @ weight.T))[targets[i]] for hidden [N, d], weight [V, d], targets [N].

    Matmuls run in `hidden`'s dtype (bf16 under autocast), the softmax in fp32. `grad_rows`: the only rows of
    `weight` whose gradient anything uses (LoRA's trainable chat tokens), so the [V, d] gradient matmul shrinks to
    those rows; None = every row, when the weight trains. `cap`: Gemma-style final logit soft-capping, or None.
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, grad_rows, cap, rows)
