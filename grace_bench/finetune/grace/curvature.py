"""Curvature curriculum for LAR-AWP: per-layer Gauss-Newton-diagonal proxy, EMA, percentile -> AWP rank.

For each adapted layer l, with g the gradient of the mean cross-entropy of a curvature mini-batch of size
n_v w.r.t. that layer's LoRA factors (A and B together), the proxy is h_l = mean(n_v * g * g) over all
entries. It is smoothed with an EMA. Every K steps (and at step 0) the layers are ranked: values above the
``top_pct`` percentile get the high rank, values below the ``bottom_pct`` percentile get the low rank (a
rank-0 layer is not perturbed), the rest the middle rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.geometry.diagonal import gauss_newton_diagonal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurriculumSettings:
    """Knobs of the curvature curriculum (paper defaults: beta 0.9, K 1000, phi 80, ranks 0/2/4)."""

    beta: float = 0.9
    refresh_every: int = 1000
    top_pct: float = 80.0
    bottom_pct: float = 20.0
    ranks: tuple[int, int, int] = (0, 2, 4)
    max_rank: int = 4

    def validate(self) -> None:
        """Raise ``UserError`` naming the bad field and its allowed range."""
        if not 0.85 <= self.beta <= 0.95:
            raise UserError(f"curvature EMA beta {self.beta} is outside 0.85-0.95; pass e.g. --grace-curv-beta 0.9")
        if self.refresh_every < 1:
            raise UserError(f"curvature refresh interval K={self.refresh_every} must be >= 1; pass e.g. 1000")
        if not 0.0 <= self.bottom_pct < self.top_pct <= 100.0:
            raise UserError(
                f"curriculum percentiles must satisfy 0 <= bottom ({self.bottom_pct}) < top ({self.top_pct}) <= 100"
            )
        lo, mid, hi = self.ranks
        if len(self.ranks) != 3 or not 0 <= lo <= mid <= hi <= self.max_rank:
            raise UserError(
                f"curriculum ranks {tuple(self.ranks)} must be low <= mid <= high within 0..{self.max_rank}"
            )


def allocate_ranks(
    values: Sequence[float], *, top_pct: float, bottom_pct: float, ranks: tuple[int, int, int]
) -> list[int]:
    """Map per-layer curvature values to AWP ranks by percentile (strict thresholds: ties go to the middle)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("need a non-empty 1-D sequence of curvature values")
    if not np.isfinite(v).all():
        raise ValueError("curvature values must be finite")
    hi_thr = np.percentile(v, top_pct)
    lo_thr = np.percentile(v, bottom_pct)
    lo, mid, hi = ranks
    return [hi if x > hi_thr else lo if x < lo_thr else mid for x in v.tolist()]


def gauss_newton_diag_proxy(grads: Sequence[torch.Tensor | None], n_v: int) -> torch.Tensor:
    """Mean over all entries of ``n_v * g * g`` for one layer's factor gradients (missing grads are left out)."""
    return gauss_newton_diagonal(grads, n_v).block_means([range(len(grads))])[0]


def measure_layer_curvature(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    layer_factors: Sequence[Sequence[torch.Tensor]],
) -> torch.Tensor:
    """Per-layer proxy (shape ``(num_layers,)``) from one CE forward/backward on the curvature batch (x, y).

    ``layer_factors[l]`` lists layer l's LoRA factor tensors. Parameter ``.grad`` fields are not touched.
    The proxy is the block mean of the shared Gauss-Newton diagonal (``geometry.diagonal``), one block per layer.
    """
    flat = [p for factors in layer_factors for p in factors]
    loss = F.cross_entropy(logits_fn(x), y)
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    blocks, i = [], 0
    for factors in layer_factors:
        blocks.append(range(i, i + len(factors)))
        i += len(factors)
    return gauss_newton_diagonal(grads, x.shape[0]).block_means(blocks)


class CurvatureCurriculum:
    """EMA of per-layer curvature and the rank allocation derived from it.

    ``update`` stays on device (no host sync); ``maybe_refresh(step)`` syncs once every K steps.
    """

    def __init__(self, layer_names: Sequence[str], settings: CurriculumSettings | None = None) -> None:
        self.settings = settings or CurriculumSettings()
        self.settings.validate()
        if not layer_names:
            raise ValueError("curvature curriculum needs at least one layer")
        self.layer_names = list(layer_names)
        self.ema: torch.Tensor | None = None
        self.num_updates = 0
        self.ranks: list[int] | None = None
        self.history: list[dict[str, Any]] = []

    def update(self, values: torch.Tensor) -> None:
        """Fold one measurement (shape ``(num_layers,)``) into the EMA; the first one initialises it."""
        values = values.detach().float()
        if values.shape != (len(self.layer_names),):
            raise ValueError(f"expected {len(self.layer_names)} curvature values, got shape {tuple(values.shape)}")
        if self.ema is None:
            self.ema = values.clone()
        else:
            if self.ema.device != values.device:
                self.ema = self.ema.to(values.device)
            self.ema.mul_(self.settings.beta).add_(values, alpha=1.0 - self.settings.beta)
        self.num_updates += 1

    def due(self, step: int) -> bool:
        """Whether ``step`` is a refresh step (step 0 and every K steps)."""
        return step % self.settings.refresh_every == 0

    def maybe_refresh(self, step: int) -> dict[str, int] | None:
        """On a refresh step, re-rank the layers; return the new ``{layer: rank}`` if it changed, else None."""
        if not self.due(step):
            return None
        if self.ema is None:
            raise RuntimeError("curvature curriculum refreshed before any curvature measurement")
        s = self.settings
        new = allocate_ranks(self.ema.cpu().tolist(), top_pct=s.top_pct, bottom_pct=s.bottom_pct, ranks=s.ranks)
        if new == self.ranks:
            return None
        self.ranks = new
        allocation = dict(zip(self.layer_names, new))
        counts = {str(r): new.count(r) for r in sorted(set(s.ranks))}
        self.history.append({"step": step, "ranks": allocation, "counts": counts})
        log.info("LAR-AWP rank allocation at step %d: %s", step, counts)
        return allocation

    def allocation(self) -> dict[str, int] | None:
        """Current ``{layer: rank}`` (None before the first refresh)."""
        return None if self.ranks is None else dict(zip(self.layer_names, self.ranks))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values for resuming (safe for ``torch.load(weights_only=True)``)."""
        return {
            "ema": None if self.ema is None else self.ema.detach().cpu(),
            "num_updates": self.num_updates,
            "ranks": self.ranks,
            "layer_names": list(self.layer_names),
            "history": self.history,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict()``; the layer names must match."""
        if list(state["layer_names"]) != self.layer_names:
            raise UserError("checkpoint's LAR-AWP layers differ from the model's; resume with the same LoRA targets")
        ema = state["ema"]
        self.ema = None if ema is None else ema.detach().float().clone()  # moved to the model's device on update
        self.num_updates = int(state["num_updates"])
        self.ranks = None if state["ranks"] is None else [int(r) for r in state["ranks"]]
        self.history = list(state["history"])
