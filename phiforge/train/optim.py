"""Pieces every training stage shares: device, precision, optimiser, the paper's LR schedule, the loss."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from phiforge.config import OptimConfig

IGNORE = -100


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(dtype: str, dev: torch.device | None = None):
    """bf16 autocast: on this class of CPU bf16 matmuls run about 4x faster than fp32; weights and the optimiser
    stay fp32, and the loss is computed in fp32 (see `cross_entropy`)."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    dev = dev or device()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def build_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norm gains toward zero only hurts."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel does the whole update in one pass over each tensor, much faster than the default per-tensor
    # loop on CPU (bench/README.md). Sharded (DTensor) parameters keep the default implementation.
    fused = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused or None)


def lr_at(step: int, total: int, o: OptimConfig) -> float:
    """Linear warm-up to the peak, then linear decay to peak * final_lr_ratio at `total` (Phi-4 §3.3, not cosine).

    `step` counts from 0; the first update already uses a non-zero rate.
    """
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, total - o.warmup_steps)
    frac = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (1.0 - frac * (1.0 - o.final_lr_ratio))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed fp32 cross-entropy over targets that are not IGNORE, and how many there were.

    Returning the sum lets gradient accumulation divide by the token count of the whole step, so every target token
    weighs the same however the batch is split.
    """
    flat, tgt = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    count = int((tgt != IGNORE).sum())
    if flat.requires_grad and flat.device.type == "cpu" and not torch.compiler.is_compiling():
        return _ChunkedCrossEntropy.apply(flat, tgt), count
    return F.cross_entropy(flat.float(), tgt, ignore_index=IGNORE, reduction="sum"), count


def clip_and_step(model: torch.nn.Module, opt: torch.optim.Optimizer, grad_clip: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: the norm is a DTensor over the shards
        norm = norm.full_tensor()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


# Rows per chunk: 256 x vocab fp32 values stay in L2 for vocabularies up to ~8k.
_CE_ROWS = 256


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of bf16 (or fp32) logits [N, V], upcast to fp32 a chunk of rows at a time.

    Ours because the composite `F.cross_entropy(logits.float())` makes a full fp32 copy of the logits, keeps the fp32
    log-softmax for the backward, and there writes a zero-filled fp32 gradient, scatters into it, and casts it back:
    on CPU about five full passes over the largest tensor of the step. Here the backward recomputes softmax from the
    saved logits and per-row log-sum-exp, one chunk at a time, and writes the gradient once in the logits' dtype
    (the same single rounding autocast's cast would apply). Numerically the same function in fp32.
    """

    @staticmethod
    def forward(ctx, logits, targets):
        valid = targets != IGNORE
        safe = targets.clamp_min(0)
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        for s in range(0, logits.shape[0], _CE_ROWS):
            torch.logsumexp(logits[s : s + _CE_ROWS].float(), dim=-1, out=lse[s : s + _CE_ROWS])
        ctx.save_for_backward(logits, safe, valid, lse)
        return ((lse - picked) * valid).sum()

    @staticmethod
    def backward(ctx, g):
        logits, safe, valid, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = valid.float() * g  # d(sum)/d(row) is g for counted rows and 0 for ignored ones
        rows = torch.arange(logits.shape[0], device=logits.device)
        for s in range(0, logits.shape[0], _CE_ROWS):
            e = min(s + _CE_ROWS, logits.shape[0])
            p = logits[s:e].float().sub_(lse[s:e, None]).exp_()
            p[rows[: e - s], safe[s:e]] -= 1.0
            grad[s:e] = p.mul_(scale[s:e, None])
        return grad, None
