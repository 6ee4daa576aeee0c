"""What a run's numbers depend on beyond its recipe: the processor, the kernels torch picks on it, the thread count.

Every stage's manifest records it, so that two run folders whose results differ can be told apart by
`phiforge compare` (the first stage whose outputs differ, and what differed about the machines). Training's bf16
matmuls run through oneDNN, which picks its kernels by instruction set (AMX tiles on Intel Xeon, AVX-512 BF16 on
AMD EPYC), and fp32 reductions through ATen's kernels for the CPU capability: each choice fixes a summation order,
so the same recipe agrees bit for bit only between machines on which all of these are equal.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch

# Environment variables that change which kernels run, hence the last bits of every float.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
              "OMP_NUM_THREADS")
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    model, flags = "", ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = tuple(sorted(set(value.split()) & set(_FLAGS)))
    except OSError:  # not Linux: what platform says is all there is
        pass
    return model or platform.processor() or platform.machine(), flags


def describe() -> dict:
    """The facts a stage's floats depend on, JSON-ready."""
    model, flags = _cpuinfo()
    info = {
        "cpu": model,
        "cpu_flags": list(flags),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def reset_peak_rss() -> bool:
    """Start the process's peak resident memory afresh (Linux: `/proc/self/clear_refs`), so a stage's peak is its own
    rather than the largest of every stage before it in the same process; False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb() -> float:
    """Peak resident memory in GB since the last `reset_peak_rss` (else since the process started)."""
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        import resource  # no /proc: the process's lifetime peak (kB on Linux, bytes on macOS; approximate there)

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1e6, 3)
