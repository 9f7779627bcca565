"""Device and process-group handling for every command (eval, finetune, geometry, compare).

Rules, in one place:

- Without torchrun (``WORLD_SIZE`` unset or 1) no process group is joined and ``--device`` is used as given.
- Under torchrun (``WORLD_SIZE > 1``) each process takes the GPU of its ``LOCAL_RANK``: ``--device cuda`` or
  ``auto`` (with a GPU) becomes ``cuda:LOCAL_RANK`` (and the current CUDA device) with the NCCL backend;
  ``--device cpu`` uses gloo.
- Collectives run on the backend's device: the rank's GPU for NCCL, the CPU for gloo (``Runtime.all_reduce_sum``).
- Only rank 0 writes shared files: ``Runtime.is_main`` and the ``Runtime.main_writes()`` context.

An inconsistent launch (more processes per node than GPUs, ``WORLD_SIZE`` without ``RANK`` or ``MASTER_ADDR``,
CUDA asked for but absent, one named GPU for many processes) raises a one-line ``UserError`` naming the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from grace_bench.errors import UserError

MAIN_WAIT_TIMEOUT = timedelta(hours=24)
_WAIT_GROUP: list = [None, None]  # [the default group it belongs to, the gloo group main_writes waits on]
_TORCHRUN = "launch with torchrun (it sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)"


@dataclass(frozen=True)
class Launch:
    """What the launcher's environment says about this process (``world_size == 1`` without torchrun)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int | None = None  # None: LOCAL_RANK is not set
    local_world_size: int | None = None  # None: LOCAL_WORLD_SIZE is not set

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"environment variable {name}={text!r} is not an integer; {_TORCHRUN}") from None


def read_launch(env: Mapping[str, str] | None = None) -> Launch:
    """Read and check the torchrun variables of ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE")
    local_rank, local_world = _env_int(env, "LOCAL_RANK"), _env_int(env, "LOCAL_WORLD_SIZE")
    if world is None or world == 1:
        return Launch(local_rank=local_rank, local_world_size=local_world)
    if world < 1:
        raise UserError(f"WORLD_SIZE={world} must be at least 1; {_TORCHRUN}")
    rank = _env_int(env, "RANK")
    if rank is None:
        raise UserError(f"WORLD_SIZE={world} is set but RANK is not; {_TORCHRUN}")
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world}); {_TORCHRUN}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise UserError(f"WORLD_SIZE={world} is set but {name} is not; {_TORCHRUN}, or set {name}")
    if local_rank is not None and local_world is not None and not 0 <= local_rank < local_world:
        raise UserError(f"LOCAL_RANK={local_rank} is outside 0..{local_world - 1} (LOCAL_WORLD_SIZE={local_world}); "
                        f"{_TORCHRUN}")
    return Launch(world_size=world, rank=rank, local_rank=local_rank, local_world_size=local_world)


def resolve_device(name: str = "auto", launch: Launch | None = None) -> torch.device:
    """This process's device for ``--device name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) under ``launch``."""
    launch = read_launch() if launch is None else launch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if not launch.distributed:
        if device.index is not None and device.index >= gpus:
            raise UserError(f"--device {name}: only {gpus} GPU(s) are visible (cuda:0..cuda:{gpus - 1}); "
                            "pick one of them")
        return device
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"--device {name} cannot be used under torchrun; use --device cuda or cpu")
    if device.index is not None:
        raise UserError(f"--device {name} names one GPU but torchrun started {launch.world_size} processes; "
                        "use --device cuda (each process takes cuda:LOCAL_RANK)")
    if launch.local_rank is None:
        raise UserError(f"LOCAL_RANK is not set, so the GPU of this process is unknown; {_TORCHRUN}")
    per_node = launch.local_world_size if launch.local_world_size is not None else launch.local_rank + 1
    if max(per_node, launch.local_rank + 1) > gpus:
        raise UserError(f"torchrun started {per_node} processes on this node but only {gpus} GPU(s) are visible; "
                        f"use --nproc_per_node {gpus} (or fewer), or --device cpu")
    return torch.device("cuda", launch.local_rank)


def _wait_group():
    """The gloo group (all ranks, long timeout) that ``main_writes`` waits on; made by every rank on first use."""
    world = dist.group.WORLD
    if _WAIT_GROUP[1] is None or _WAIT_GROUP[0] is not world:  # first use, or a new default group
        _WAIT_GROUP[:] = [world, dist.new_group(backend="gloo", timeout=MAIN_WAIT_TIMEOUT)]
    return _WAIT_GROUP[1]


def backend_for(device: torch.device) -> str:
    """The process-group backend of ``device``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclass
class Runtime:
    """This process's rank, world size and device, and the collectives every command needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (under NCCL on this rank's GPU, so NCCL need not guess the device)."""
        if not self.enabled:
            return
        if self.backend == "nccl" and self.device.type == "cuda" and self.device.index is not None:
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def collective_device(self) -> torch.device:
        """Where collective tensors must live: this rank's GPU for NCCL (which rejects CPU tensors), else the CPU."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """A summed copy of ``tensor`` over ranks, on ``tensor``'s device (reduced on ``collective_device()``)."""
        out = tensor.detach().clone()
        if not self.enabled:
            return out
        work = out.to(self.collective_device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(tensor.device)

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks, in float64 (a no-op in one process)."""
        if not self.enabled:
            return [float(v) for v in values]
        return self.all_reduce_sum(torch.tensor([float(v) for v in values], dtype=torch.float64)).tolist()

    def shard_strided(self, indices: Sequence[int]) -> list[int]:
        """This rank's share of ``indices``: every ``world_size``-th item from ``rank`` (near-equal parts)."""
        return list(indices[self.rank::self.world_size])

    @contextmanager
    def main_writes(self) -> Iterator[bool]:
        """``with rt.main_writes() as writer: if writer: ...``: rank 0 writes, then every rank waits for it.

        The wait is a barrier on a gloo group with a ``MAIN_WAIT_TIMEOUT`` (rank 0 may work for hours, beyond
        NCCL's 10-minute collective timeout). If the block raises on rank 0 the barrier is skipped; torchrun then
        stops the other ranks.
        """
        yield self.is_main
        if self.enabled:
            dist.barrier(group=_wait_group())


def init_runtime(device: str = "auto", launch: Launch | None = None) -> Runtime:
    """Resolve this process's device and, under torchrun, join (or reuse) the default process group."""
    launch = read_launch() if launch is None else launch
    dev = resolve_device(device, launch)
    if not launch.distributed:
        return Runtime(device=dev, local_rank=launch.local_rank or 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(dev))
    return Runtime(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=launch.local_rank or 0,
                   backend=dist.get_backend(), device=dev)


def current_runtime(device: torch.device | str | None = None) -> Runtime:
    """The ``Runtime`` of an already-joined process group (or of one process); ``device``: this rank's device.

    Without ``device``, NCCL means the current CUDA device and anything else the CPU.
    """
    local_rank = _env_int(os.environ, "LOCAL_RANK") or 0
    if not (dist.is_available() and dist.is_initialized()):
        return Runtime(local_rank=local_rank, device=torch.device(device or "cpu"))
    backend = dist.get_backend()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Runtime(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend,
                   device=torch.device(device))
