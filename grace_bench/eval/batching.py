"""Batches from any dataset: slicing for in-memory tensors, a worker DataLoader otherwise."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset


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
