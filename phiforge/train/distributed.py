"""torchrun integration: the process group, and data parallelism applied outside the model.

`phiforge` is started the same way on one process or many (`torchrun --nproc_per_node N -m phiforge.cli run ...`);
the model code never knows. DDP replicates the model; FSDP2 shards it with `fully_shard` on every decoder block and
then on the root, so each block's parameters are gathered only while that block runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def world() -> World:
    """The torchrun world, initialising the process group once (gloo on CPU, NCCL on GPUs)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    w = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(w.local_rank)
        # Ranks other than 0 wait in a barrier while rank 0 runs the single-process stages (synth, eval, ...),
        # which can take far longer than the default 30-minute collective timeout.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    return w


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def parallelize(model: nn.Module, mode: str, w: World) -> nn.Module:
    """Wrap a model for data parallelism; a single process gets the model back unchanged."""
    if w.size == 1:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[w.local_rank] if torch.cuda.is_available() else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")


def set_grad_sync(model: nn.Module, sync: bool) -> None:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if hasattr(model, "require_backward_grad_sync"):  # DDP
        model.require_backward_grad_sync = sync
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimiser state on CPU (a collective: every rank must call it)."""
    return get_state_dict(unwrap(model) if not _is_fsdp(model) else model, opt, options=_FULL)


def load_full_state(model: nn.Module, opt: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    set_state_dict(unwrap(model) if not _is_fsdp(model) else model, opt, model_state_dict=model_sd,
                   optim_state_dict=optim_sd, options=StateDictOptions(full_state_dict=True))


def _is_fsdp(model: nn.Module) -> bool:
    return type(model).__name__.startswith("FSDP")
