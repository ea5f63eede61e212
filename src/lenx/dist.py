"""Process-group helpers: lenx runs the same code on every rank; Lightning owns the process group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank zero, the only rank that writes results, plots and W&B data. Before the process group exists (data
    preparation, config checks), Lightning's rank from the launcher's environment (RANK / LOCAL_RANK / SLURM)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def all_reduce_sum(tensors: list[torch.Tensor], device: torch.device) -> None:
    """Sum each tensor over ranks, in place (through `device`, as NCCL needs CUDA tensors); no-op on one rank."""
    if rank_world()[1] == 1:
        return
    for t in tensors:
        moved = t.to(device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        t.copy_(moved.cpu())
