"""Gram-volume (GV) alignment loss over the clean, adversarial and perturbed-weight views.

For each sample i the three embeddings are unit-normalised and stacked; G_i is their 3x3 Gram matrix
plus ``eps * I``. With pairwise cosines a, b, c the determinant is, in closed form,
``(1+eps)^3 + 2abc - (1+eps)(a^2 + b^2 + c^2)``; for eps = 0 that is ``1 + 2abc - a^2 - b^2 - c^2``:
0 for three identical directions and 1 for three orthonormal ones. The loss is the batch mean of
``sqrt(|det G_i| + tiny)``, the volume of the parallelepiped the three views span.

With only two views (the ``gv`` ablation has no perturbed-weight view; repeating a view would make every
volume zero) the same formula gives the 2x2 Gram determinant ``(1+eps)^2 - a^2``: the squared area the
two unit embeddings span.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_GV_EPS = 1e-4
DEFAULT_GV_TINY = 1e-12


def _check_views(*views: torch.Tensor) -> None:
    shape = views[0].shape
    if views[0].dim() != 2:
        raise ValueError(f"Gram volume needs (batch, dim) embeddings, got shape {tuple(shape)}")
    for v in views[1:]:
        if v.shape != shape:
            raise ValueError(f"Gram volume needs three views of one shape, got {tuple(shape)} and {tuple(v.shape)}")


def gram_determinants(
    f_clean: torch.Tensor, f_adv: torch.Tensor, f_awp: torch.Tensor | None = None, *, eps: float = DEFAULT_GV_EPS
) -> torch.Tensor:
    """Per-sample ``det(G_i + eps*I)`` of the unit-normalised views, shape (batch,); 2x2 when ``f_awp`` is None.

    Uses the closed form of the determinant of a unit-diagonal Gram matrix (cheaper and with a
    well-defined gradient everywhere, unlike a generic LU determinant near singular matrices).
    """
    views = (f_clean, f_adv) if f_awp is None else (f_clean, f_adv, f_awp)
    _check_views(*views)
    d = 1.0 + eps
    unit = [F.normalize(f, dim=-1) for f in views]
    a = (unit[0] * unit[1]).sum(-1)
    if f_awp is None:
        return d * d - a * a
    b = (unit[0] * unit[2]).sum(-1)
    c = (unit[1] * unit[2]).sum(-1)
    return d**3 + 2.0 * a * b * c - d * (a * a + b * b + c * c)


def gram_volume_loss(
    f_clean: torch.Tensor,
    f_adv: torch.Tensor,
    f_awp: torch.Tensor | None,
    *,
    eps: float = DEFAULT_GV_EPS,
    tiny: float = DEFAULT_GV_TINY,
) -> torch.Tensor:
    """L_GV = mean_i sqrt(|det(G_i + eps*I)| + tiny). Gradients flow through all views (2 when f_awp is None)."""
    det = gram_determinants(f_clean, f_adv, f_awp, eps=eps)
    return torch.sqrt(det.abs() + tiny).mean()
