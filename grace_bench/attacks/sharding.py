"""Attack chunks across torchrun ranks: which rank runs which chunk, and the two collectives the loop needs.

Chunks are dealt round-robin (chunk ``c`` runs on rank ``c % world``), so every rank gets a near-equal share
and the deal depends only on the number of chunks and the world size. A chunk's flags depend only on its
examples, the attack and ``chunk_seed(seed, c)``, so the gathered flags are the same for every world size.
The collectives move JSON through byte tensors on the backend's device (CUDA for NCCL, the CPU for gloo).
"""

from __future__ import annotations

import json
from typing import Any

import torch


def deal_chunks(n_chunks: int, rank: int, world: int) -> list[int]:
    """The chunk indices rank ``rank`` of ``world`` runs, in subset order (round-robin)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of size {world}")
    return list(range(rank, n_chunks, world))


def collective_device(device: torch.device) -> torch.device:
    """Where tensors for the default process group must live: a CUDA device for NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_json(obj: Any, world: int, device: torch.device) -> list[Any]:
    """Every rank's JSON-able ``obj``, indexed by rank (``[obj]`` in a single process)."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    where = collective_device(device)
    payload = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=where)
    sizes = [torch.zeros(1, dtype=torch.int64, device=where) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([payload.numel()], dtype=torch.int64, device=where))
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=where)
    padded[: payload.numel()] = payload
    parts = [torch.empty(longest, dtype=torch.uint8, device=where) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [json.loads(bytes(p[: int(s.item())].cpu().tolist()).decode()) for p, s in zip(parts, sizes)]


def rank0_decides(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank, so all ranks take the same branch (``flag`` itself in one process)."""
    if world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([int(flag)], dtype=torch.int64, device=collective_device(device))
    dist.broadcast(t, src=0)
    return bool(t.item())
