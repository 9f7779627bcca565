"""Batches from any dataset: slicing for in-memory tensors, a worker DataLoader otherwise."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

MAX_AUTO_WORKERS = 16


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def auto_workers(requested: int | None, suite_workers: int) -> int:
    """Data-loader workers: ``requested`` if given; else 0 for in-memory suites (``suite_workers`` 0), else one
    per usable core but one (the main process runs the model), at most ``MAX_AUTO_WORKERS``.

    Measured (benchmarks/eval_throughput.py, decoding rows): one core decodes ~350 ImageNet-sized JPEGs/s, so
    a GPU needs many workers; on a single core a worker only adds inter-process cost (0.5x throughput).
    """
    if requested is not None:
        return requested
    if suite_workers == 0:
        return 0
    return max(0, min(MAX_AUTO_WORKERS, usable_cores() - 1))


def iter_batches(
    dataset: Dataset,
    indices: Sequence[int],
    batch_size: int,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) over ``indices`` in order, ``batch_size`` at a time."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[:2]
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        for start in range(0, len(idx), batch_size):
            sel = idx[start : start + batch_size]
            yield x[sel], y[sel]
        return
    loader = DataLoader(
        Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
    )
    yield from loader
