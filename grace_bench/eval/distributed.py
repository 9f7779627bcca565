"""Compatibility aliases for evaluation: the device and process-group logic lives in ``grace_bench.runtime``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grace_bench.runtime import current_runtime, init_runtime


def init_from_env(device: torch.device | str) -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world size). Prefer ``init_runtime``."""
    kind = torch.device(device).type
    rt = init_runtime("cuda" if kind == "cuda" else str(device))  # each rank re-resolves cuda:LOCAL_RANK
    return rt.rank, rt.world_size


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of ``indices`` (strided, so every rank gets a near-equal part)."""
    return list(indices[rank::world])


def sum_across_ranks(values: Sequence[float], world: int, device: torch.device | str | None = None) -> list[float]:
    """Element-wise sum over ranks, reduced on the backend's device (a no-op in a single process)."""
    if world <= 1:
        return [float(v) for v in values]
    return current_runtime(device).sum_values(values)


def barrier(world: int) -> None:
    if world > 1:
        current_runtime().barrier()
