"""Transforms of a zero-shot head that a checkpoint carries in its ``config.json`` (``"head_transform"``).

A method whose classifier is not the plain template-averaged head records how to rebuild it, and every
head built for that checkpoint (``eval``, ``compare``, diagnostics, the trainer's validation) gets it after
template averaging. One kind exists:

``anchor_expansion`` (LAAT's semantic-anchor expansion): with ``mu`` the unit mean direction of the training
classes' anchors and ``theta_max`` their largest angle to it, each unit column ``a_c`` at angle ``theta_c``
from ``mu`` is rotated, in the plane of ``mu`` and ``a_c``, to angle ``(pi/2) * theta_c / theta_max``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from grace_bench.errors import UserError

ANCHOR_EXPANSION = "anchor_expansion"
KINDS: tuple[str, ...] = (ANCHOR_EXPANSION,)


def anchor_statistics(head: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(mu, theta_max)`` of a (D, C) head: the normalised mean column and the largest angle of a column to it."""
    cols = F.normalize(head.float(), dim=0)
    mu = F.normalize(cols.mean(dim=1), dim=0)
    theta = torch.arccos((mu @ cols).clamp(-1.0, 1.0))
    return mu, float(theta.max())


def expand_anchors(head: torch.Tensor, mu: torch.Tensor, theta_max: float) -> torch.Tensor:
    """LAAT's expansion of the (D, C) head: angle to ``mu`` scaled by ``(pi/2) / theta_max``, unit columns."""
    cols = F.normalize(head.float(), dim=0)
    mu = F.normalize(mu.to(cols).reshape(-1), dim=0)
    cos = (mu @ cols).clamp(-1.0, 1.0)
    theta = torch.arccos(cos) * (math.pi / 2) / theta_max
    orthogonal = F.normalize(cols - mu[:, None] * cos[None, :], dim=0)  # u_c (0 for a column equal to mu)
    out = mu[:, None] * torch.cos(theta)[None, :] + orthogonal * torch.sin(theta)[None, :]
    return out.to(head.dtype)


def validate_head_transform(spec: Any, where: str) -> dict[str, Any] | None:
    """``spec`` checked (None passes through); a UserError naming ``where`` when it is malformed."""
    if spec is None:
        return None
    fix = "rerun the fine-tuning or restore the run's config.json"
    if not isinstance(spec, Mapping) or spec.get("kind") not in KINDS:
        raise UserError(f"{where}: head_transform must be an object with kind in {', '.join(KINDS)}; {fix}")
    mu, theta_max = spec.get("mu"), spec.get("theta_max")
    if not isinstance(mu, (list, tuple)) or not mu or not all(isinstance(v, (int, float)) for v in mu) \
            or not all(math.isfinite(v) for v in mu) or not any(mu):
        raise UserError(f"{where}: head_transform.mu must be a non-zero list of finite numbers; {fix}")
    if isinstance(theta_max, bool) or not isinstance(theta_max, (int, float)) or not 0 < theta_max <= math.pi:
        raise UserError(f"{where}: head_transform.theta_max must be in (0, pi], got {theta_max!r}; {fix}")
    return {"kind": ANCHOR_EXPANSION, "mu": [float(v) for v in mu], "theta_max": float(theta_max)}


def apply_head_transform(head: torch.Tensor, spec: Mapping[str, Any] | None) -> torch.Tensor:
    """``head`` (D, C) with the recorded transform applied (unchanged when ``spec`` is None)."""
    if spec is None:
        return head
    mu = torch.as_tensor(spec["mu"], dtype=torch.float32, device=head.device)
    if mu.numel() != head.shape[0]:
        raise UserError(f"head_transform.mu has {mu.numel()} dimensions but the head has {head.shape[0]}; "
                        "the run's config.json belongs to another architecture")
    return expand_anchors(head, mu, float(spec["theta_max"]))


def anchor_expansion_spec(head: torch.Tensor) -> dict[str, Any]:
    """The ``head_transform`` record of LAAT's expansion fitted on ``head`` (the training classes' anchors)."""
    mu, theta_max = anchor_statistics(head)
    if not theta_max > 0:
        raise UserError("LAAT's anchor expansion needs at least two distinct class anchors; check the class names")
    return {"kind": ANCHOR_EXPANSION, "mu": mu.tolist(), "theta_max": theta_max}
