"""torchrun support for evaluation: shard indices by rank and sum counts across ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Initialise the default process group when launched by torchrun; returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This rank's share of ``indices`` (strided, so every rank gets a near-equal part)."""
    return indices[rank::world]


def sum_across_ranks(values: list[float], world: int) -> list[float]:
    """Element-wise sum over ranks (a no-op in a single process)."""
    if world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
