"""Test helpers: a tiny 16 px suite derived from the micro digits, registered under 'tiny-micro'."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_TEMPLATES, micro_dataset
from grace_bench.data.suites import DatasetSpec, Suite, register_suite


def downsampled(name: str, split: str = "test", n: int | None = 64) -> TensorDataset:
    """A micro dataset pooled to 16x16 (tiny-clip's input size), first ``n`` images."""
    x, y = micro_dataset(name, split).tensors
    if n is not None:
        x, y = x[:n], y[:n]
    return TensorDataset(F.avg_pool2d(x, 2), y.clone())


def register_tiny_suite(n: int = 64) -> Suite:
    roles = {"micro": "id", "micro-v2": "ood", "micro-sketch": "ood", "micro-a": "nat-adv"}
    specs = tuple(
        DatasetSpec(name, role, lambda ctx, name=name: downsampled(name, "test", n)) for name, role in roles.items()
    )
    suite = Suite("tiny-micro", MICRO_CLASSNAMES, MICRO_TEMPLATES, specs,
                  train_loader=lambda ctx, split: downsampled("micro", split, None))
    register_suite("tiny-micro", lambda: suite)
    return suite


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)
