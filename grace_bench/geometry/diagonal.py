"""Diagonal curvature estimates held per parameter tensor, and their per-layer (block) means.

Two sources share this container: the Hutchinson diagonal ``E[v * Hv]`` of any operator
(``estimators.hutchinson_diagonal``) and the Gauss-Newton / empirical-Fisher diagonal proxy
``n * g * g`` of a mean loss over a batch of ``n`` samples (``gauss_newton_diagonal``, used by GRACE's
curvature curriculum). A layer's curvature is the mean of the diagonal over its entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Diagonal:
    """``diag = scale * parts[i]`` for each tensor ``i``; a ``None`` part has no estimate and is left out of means.

    ``scale`` is kept apart so that a block mean is ``sum(parts) * (scale / count)``: one multiply per block.
    """

    parts: list[torch.Tensor | None]
    scale: float = 1.0

    @classmethod
    def from_flat(cls, flat: torch.Tensor, slices: Mapping[str, slice]) -> Diagonal:
        """Split a flat diagonal into the parts named by ``slices`` (in their order)."""
        return cls([flat[sl] for sl in slices.values()])

    def block_means(self, blocks: Sequence[Sequence[int]]) -> torch.Tensor:
        """Mean diagonal entry of each block (a block lists part indices); shape ``(len(blocks),)``."""
        out = []
        for block in blocks:
            total, count = None, 0
            for i in block:
                part = self.parts[i]
                if part is None:
                    continue
                s = part.sum()
                total = s if total is None else total + s
                count += part.numel()
            if total is None:
                raise ValueError("a block has no diagonal entries (no gradients); is it part of the computation graph?")
            out.append(total * (self.scale / count))
        return torch.stack(out)

    def flat(self) -> torch.Tensor:
        """All present parts, scaled, as one flat vector."""
        return torch.cat([p.reshape(-1) for p in self.parts if p is not None]) * self.scale


def gauss_newton_diagonal(grads: Sequence[torch.Tensor | None], n: int) -> Diagonal:
    """The diagonal proxy ``n * g * g`` (float32) from the gradients ``g`` of a mean loss over ``n`` samples."""
    return Diagonal([None if g is None else g.detach().float().pow(2) for g in grads], scale=float(n))
