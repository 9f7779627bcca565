"""Shared plumbing for the geometry diagnostics: fixed batches, the CE objective, parameter groups.

Every diagnostic measures one objective: the mean cross-entropy of a classifier's logits over a
*fixed* list of batches (the zero-shot-head CE when the model is a ``ZeroShotClassifier``). Batches
are weighted by their size, so the objective equals the mean CE over all samples whatever the
batching.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from grace_bench.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NamedParams = list[tuple[str, nn.Parameter]]


def as_batches(
    data: Batch | Sequence[Batch] | Iterable[Batch], device: str | torch.device | None = None
) -> list[Batch]:
    """Normalise one ``(x, y)`` batch, a list of batches or a loader into a list of device tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor) \
            and isinstance(data[1], torch.Tensor) and data[0].dim() > data[1].dim():
        items = [tuple(data)]
    else:
        items = [tuple(b[:2]) for b in data]
    if not items:
        raise UserError("the geometry data subset is empty; pass n greater than 0 or a non-empty dataset")
    out = []
    for x, y in items:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if device is not None:
            x, y = x.to(device), y.to(device)
        out.append((x, y))
    return out


def fixed_subset(dataset: Dataset, n: int | None, batch_size: int, seed: int = 0) -> list[Batch]:
    """A deterministic subset of ``n`` samples (seeded permutation; all when ``n`` is None) as CPU batches."""
    total = len(dataset)
    if total == 0:
        raise UserError("the dataset is empty; check data_root and the dataset name")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    n = total if n is None else int(n)
    if n < 1:
        raise UserError(f"n must be at least 1, got {n}")
    n = min(n, total)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(total, generator=g)[:n].sort().values.tolist()
    batches = []
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in idx[start : start + batch_size]]
        xs = torch.stack([torch.as_tensor(it[0]) for it in items])
        ys = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
        batches.append((xs, ys))
    return batches


def batches_fingerprint(batches: Sequence[Batch]) -> str:
    """sha256 (hex, 16 chars) of the batch tensors, used to validate cached results."""
    h = hashlib.sha256()
    for x, y in batches:
        for t in (x, y):
            t = t.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def num_samples(batches: Sequence[Batch]) -> int:
    return int(sum(int(y.shape[0]) for _, y in batches))


@contextmanager
def math_sdpa() -> Iterator[None]:
    """Force the math SDPA kernel: fused kernels have no double backward (needed for HVPs)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def mean_loss(model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """Sample-weighted mean of ``loss_fn(model(x), y)`` over ``batches`` (keeps the graph)."""
    total = num_samples(batches)
    loss = None
    for x, y in batches:
        term = loss_fn(model(x), y) * (y.shape[0] / total)
        loss = term if loss is None else loss + term
    return loss


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn = F.cross_entropy
) -> tuple[float, float]:
    """Mean loss and top-1 accuracy (fraction) over ``batches``, without gradients."""
    total = num_samples(batches)
    loss = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.float64)
    for x, y in batches:
        logits = model(x)
        loss += float(loss_fn(logits, y)) * (y.shape[0] / total)
        correct += (logits.argmax(dim=-1) == y).sum().double().cpu()
    return float(loss), float(correct / total)


def select_params(model: nn.Module, group: str = "vision") -> NamedParams:
    """Named floating-point parameters of a group.

    ``group``: ``all``; ``vision`` (OpenCLIP's ``visual.*``, also under a classifier's ``model.``);
    ``lora`` (every parameter whose name contains "lora"); otherwise a parameter name or module prefix
    (``model.`` is optional), e.g. ``visual.transformer.resblocks.3``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if group == "all":
        chosen = named
    elif group == "vision":
        chosen = [(n, p) for n, p in named if n.startswith("visual.") or n.startswith("model.visual.")]
    elif group == "lora":
        chosen = [(n, p) for n, p in named if "lora" in n.lower()]
    else:
        prefixes = (group, f"model.{group}")
        chosen = [(n, p) for n, p in named if any(n == q or n.startswith(q + ".") for q in prefixes)]
    if not chosen:
        hint = _prefix_examples(named)
        raise UserError(
            f"parameter group '{group}' matches no parameter; use all, vision, lora or a prefix such as {hint}"
        )
    return chosen


def _prefix_examples(named: NamedParams) -> str:
    mods = []
    for n, _ in named:
        mod = n.rsplit(".", 1)[0]
        if mod not in mods:
            mods.append(mod)
    return ", ".join(mods[:3]) if mods else "(the model has no parameters)"


@contextmanager
def grad_only_for(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily let only ``params`` require grad (saves the graph for every other weight); restores flags."""
    keep = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (deterministic dropout/BN) and restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
