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
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)


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
    flat = logits.float().reshape(-1, logits.size(-1))
    tgt = targets.reshape(-1)
    loss = F.cross_entropy(flat, tgt, ignore_index=IGNORE, reduction="sum")
    return loss, int((tgt != IGNORE).sum())


def clip_and_step(model: torch.nn.Module, opt: torch.optim.Optimizer, grad_clip: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: the norm is a DTensor over the shards
        norm = norm.full_tensor()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)
