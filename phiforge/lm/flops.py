"""FLOPs per token, the machine's peak, and MFU: what a training run is worth against what the hardware can do.

On a GPU the peak is the vendor's dense bf16 spec; on a CPU no spec fits the machine at hand, so the peak is
measured once per process with a large bf16 (or fp32) matmul, the best case any training step could reach.
"""

from __future__ import annotations

import functools
import time

import torch

from phiforge.lm.model import ModelConfig

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, without sparsity.
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the Phi-3 decoder, from the config alone (no tensors allocated)."""
    d, f, L, V = cfg.d_model, cfg.d_ffn, cfg.n_layers, cfg.vocab_size
    qkv = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    per_layer = qkv + cfg.n_heads * cfg.head_dim * d + 2 * d * f + f * d + 2 * d
    return L * per_layer + 2 * V * d + d


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """6 FLOPs per matmul weight per token (forward + backward) plus causal attention scores and values.

    The input embedding is a lookup, not a matmul, so it is left out; attention adds 6 * 2 * L * d * T / 2 (the
    causal half of QK^T and AV, forward and backward).
    """
    matmul_params = param_count(cfg) - cfg.vocab_size * cfg.d_model
    attention = 6 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 6 * matmul_params + attention


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(dtype: str = "bf16", n: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n x n matmul on this CPU, with all of torch's threads."""
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b  # warm-up: first call pays for thread-pool start and kernel selection
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: str = "bf16") -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAKS.items():
            if key in name:
                return peak if dtype == "bf16" else peak / 2
        return float("nan")
    return measured_cpu_peak(dtype)
