"""DDP collectives for training: gradient averaging, gathers and batch sharding on top of ``grace_bench.runtime``.

Device choice, process-group setup, launch checks and the summed all-reduce live in ``grace_bench.runtime``
(under torchrun each rank trains on ``cuda:LOCAL_RANK`` with NCCL, or on the CPU with gloo).

The trainer does not wrap the model in ``DistributedDataParallel``: methods run several forward and
backward passes per step (PGD, AWP ascent, frozen-model views) that DDP's reducer cannot track, and
methods call ``encode_image``/``encode_text`` rather than ``forward``. Instead, after the step's single
``loss.backward()``, ``DistInfo.average_gradients`` all-reduces the gradients (bucketed, flattened), which
is exactly DDP's arithmetic: the mean over ranks of each rank's mean-loss gradient. Nothing reads
``.module`` and no rank but 0 materialises a state dict, so an FSDP path remains open.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from grace_bench.errors import UserError
from grace_bench.runtime import Runtime, current_runtime, init_runtime

BUCKET_NUMEL = 25_000_000  # ~100 MB of fp32 per all-reduce, like DDP's default bucket


@dataclass
class DistInfo(Runtime):
    """A ``Runtime`` plus the training collectives (``world_size == 1`` and ``rank == 0`` without torchrun).

    Every tensor handed to these collectives is on this rank's device (the GPU under NCCL).
    """

    @classmethod
    def of(cls, runtime: Runtime) -> DistInfo:
        return cls(**{f.name: getattr(runtime, f.name) for f in fields(Runtime)})

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` in place over ranks (one flattened all-reduce per bucket)."""
        if not self.enabled or not tensors:
            return
        for bucket in _buckets(list(tensors)):
            flat = torch.cat([t.reshape(-1).float() for t in bucket]).to(self.collective_device())
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
            offset = 0
            for t in bucket:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n

    def average_gradients(self, params: Iterable[torch.nn.Parameter], extra: Sequence[torch.Tensor] = ()) -> None:
        """DDP-style gradient averaging of ``params`` (missing grads count as zero), plus ``extra`` scalars."""
        if not self.enabled:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.all_reduce_mean_(grads + list(extra))

    def gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` (same shape on every rank) over ranks along dim 0, in rank order, without grad."""
        if not self.enabled:
            return tensor.detach()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.detach().contiguous())
        return torch.cat(parts, dim=0)

    def gather_with_local_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Like ``gather_cat`` but this rank's slice keeps its autograd graph (for global contrastive losses).

        The gradient of a loss computed identically on every rank then flows only into local inputs, so the
        *sum* over ranks of those gradients is the full gradient: multiply such a loss by ``world_size``
        before the trainer's mean-averaging.
        """
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.detach().contiguous())
        parts[self.rank] = tensor
        return torch.cat(parts, dim=0)

    def shard(self, global_batch: Sequence[int]) -> list[int]:
        """This rank's contiguous share of a global batch of indices (the batch size must divide evenly)."""
        n = len(global_batch)
        if n % self.world_size:
            raise UserError(f"batch_size {n} is not divisible by the {self.world_size} processes; "
                            "choose a multiple of the world size")
        per = n // self.world_size
        return list(global_batch[self.rank * per:(self.rank + 1) * per])


def _buckets(tensors: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and size + t.numel() > BUCKET_NUMEL:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``); pick this rank's device.

    ``device``: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or (one process) ``cuda:N``; see
    ``grace_bench.runtime.init_runtime``.
    """
    runtime = init_runtime(device)
    return DistInfo.of(runtime), runtime.device


def current_dist_info() -> DistInfo:
    """``DistInfo`` of an already-initialised process group (or the single-process default)."""
    return DistInfo.of(current_runtime())
