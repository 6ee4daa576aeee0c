"""`phiforge plan`: what a recipe costs before it runs: parameters, FLOPs, GPU time and an FSDP2 memory plan.

The model is built on the meta device (shapes only, no memory), so the 14B recipe can be checked on a laptop. The
memory plan assumes FSDP2 full sharding with fp32 master weights, gradients and AdamW moments, bf16 compute with
one decoder block gathered at a time (plus one prefetched), and activation checkpointing per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phiforge.config import Recipe
from phiforge.lm.flops import GPU_PEAKS, param_count, train_flops_per_token
from phiforge.lm.model import Phi3

GB = 1024**3


def meta_param_count(recipe: Recipe) -> int:
    with torch.device("meta"):
        model = Phi3(recipe.model)
    return sum(p.numel() for p in model.parameters())


@dataclass
class MemoryPlan:
    rows: list[tuple[str, float]]  # (component, GiB per GPU)
    total_gb: float
    gpu_gb: float

    @property
    def fits(self) -> bool:
        return self.total_gb <= 0.9 * self.gpu_gb  # leave room for the allocator's fragmentation and NCCL buffers


def memory_plan(recipe: Recipe, gpus: int, gpu_gb: float, micro_batch: int | None = None,
                seq_len: int | None = None) -> MemoryPlan:
    """Per-GPU memory of a training step; pretraining's micro-batch and sequence unless given."""
    m, seq = recipe.model, seq_len or recipe.pretrain.seq_len
    b = micro_batch or recipe.pretrain.batch_size
    n = param_count(m)
    block = (n - 2 * m.vocab_size * m.d_model) / m.n_layers
    tokens = b * seq
    rows = [
        ("fp32 master weights (sharded)", 4 * n / gpus / GB),
        ("fp32 gradients (sharded)", 4 * n / gpus / GB),
        ("AdamW moments, fp32 (sharded)", 8 * n / gpus / GB),
        ("bf16 gathered blocks (current + prefetched)", 2 * 2 * block / GB),
        # With checkpointing only each block's bf16 input stays alive; one block's internals are rebuilt at a time.
        ("checkpointed block inputs, bf16", 2 * tokens * m.d_model * m.n_layers / GB),
        ("one block's activations during recompute", 34 * tokens * m.d_model / GB),
        ("logits, bf16 + fp32 loss", 6 * tokens * m.vocab_size / GB),
    ]
    return MemoryPlan(rows, sum(r[1] for r in rows), gpu_gb)


def describe(recipe: Recipe, gpus: int = 8, gpu: str = "H100", gpu_gb: float = 80.0, mfu: float = 0.4) -> str:
    n_meta = meta_param_count(recipe)
    n = param_count(recipe.model)
    p = recipe.pretrain
    fpt = train_flops_per_token(recipe.model, p.seq_len)
    tokens = p.steps * p.batch_size * p.grad_accum * p.seq_len
    total = fpt * tokens
    peak = GPU_PEAKS[gpu]
    gpu_days = total / (peak * mfu) / 86400
    mt = recipe.midtrain
    mt_fpt = train_flops_per_token(recipe.model, mt.seq_len)
    mt_tokens = mt.steps * mt.batch_size * mt.grad_accum * mt.seq_len
    mt_total = mt_fpt * mt_tokens
    mt_days = mt_total / (peak * mfu) / 86400
    lines = [
        f"recipe {recipe.name}: {n_meta:,} parameters (built on the meta device; {n_meta / 1e9:.2f}B)",
        f"  non-embedding: {n - 2 * recipe.model.vocab_size * recipe.model.d_model:,}",
        f"training FLOPs per token at sequence {p.seq_len}: {fpt:.4g} (6 x matmul weights + causal attention)",
        f"pretraining: {p.steps:,} steps x {p.batch_size * p.grad_accum:,} sequences x {p.seq_len:,} tokens = "
        f"{tokens:.4g} tokens, {total:.4g} FLOPs",
        f"  = {gpu_days:,.0f} {gpu}-days at {mfu:.0%} MFU ({gpu_days / gpus:,.1f} days on {gpus} GPUs)",
        f"midtraining: {mt.steps:,} steps x {mt.batch_size * mt.grad_accum:,} sequences x {mt.seq_len:,} tokens = "
        f"{mt_tokens:.4g} tokens, {mt_total:.4g} FLOPs ({mt_fpt:.4g} per token)",
        f"  = {mt_days:,.0f} {gpu}-days at {mfu:.0%} MFU ({mt_days / gpus:,.1f} days on {gpus} GPUs)",
        "",
        f"FSDP2 memory plan per GPU, {gpus} x {gpu} {gpu_gb:g} GB, micro-batch {p.batch_size} x {p.seq_len} tokens:",
    ]
    plan = memory_plan(recipe, gpus, gpu_gb)
    width = max(len(name) for name, _ in plan.rows)
    lines += [f"  {name:<{width}}  {gb:8.2f} GiB" for name, gb in plan.rows]
    verdict = "fits" if plan.fits else "does NOT fit (lower pretrain.batch_size or add GPUs)"
    lines.append(f"  {'total':<{width}}  {plan.total_gb:8.2f} GiB of {gpu_gb:g}: {verdict}")
    mt_plan = memory_plan(recipe, gpus, gpu_gb, mt.batch_size, mt.seq_len)
    verdict = "fits" if mt_plan.fits else "does NOT fit (lower midtrain.batch_size or add GPUs)"
    lines.append(f"  midtraining, micro-batch {mt.batch_size} x {mt.seq_len} tokens: "
                 f"{mt_plan.total_gb:.2f} GiB: {verdict}")
    return "\n".join(lines)
