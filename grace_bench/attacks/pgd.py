"""Projected gradient descent in [0, 1] pixel space (l-inf and l2), shared by evaluation and the trainers.

Gradients are taken only w.r.t. the input with ``torch.autograd.grad``: model parameters never receive
``.grad``, the model's train/eval mode and ``requires_grad`` flags are left as they are, and the loop has
no host synchronisation (no ``.item()``), so it runs asynchronously on GPUs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from grace_bench.attacks.threat import parse_eps, parse_norm
from grace_bench.errors import UserError

LossFn = Callable[[torch.Tensor], torch.Tensor]


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin ``max_{j != y} z_j - z_y`` (positive once misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    eps: float | str,
    norm: str = "Linf",
    steps: int = 10,
    step_size: float | str = 1 / 255,
    random_start: bool = True,
    loss: str = "ce",
    targeted: bool = False,
    target: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
    momentum: float = 0.0,
) -> torch.Tensor:
    """Maximise a per-sample loss within the ``norm`` ball of radius ``eps`` around ``x``; returns ``x_adv``.

    ``loss`` is ``"ce"`` or ``"margin"`` on ``model(x_adv)`` and labels ``y``. With ``targeted=True`` the
    attack instead pushes towards ``target`` (minimises CE to it / maximises its margin). ``loss_fn(x_adv)``
    replaces both with any per-sample objective to maximise (e.g. FARE's embedding distance). The result
    is detached, lies in [0, 1] and within the ball; ``generator`` seeds the random start.

    ``momentum`` > 0 (l-inf only) accumulates the sign steps, ``v <- momentum * v + sign(g)``, and steps along
    ``sign(v)`` (Sim-CLIP's training attack); 0 is plain PGD.
    """
    eps_f = parse_eps(eps)
    alpha = parse_eps(step_size)
    norm = parse_norm(norm)
    if steps < 0:
        raise UserError(f"PGD steps must be >= 0, got {steps}")
    if loss not in ("ce", "margin"):
        raise UserError(f"unknown PGD loss {loss!r}; use 'ce' or 'margin'")
    if momentum and norm != "Linf":
        raise UserError(f"PGD momentum is defined for Linf only, got norm {norm!r}; set momentum to 0")
    objective = loss_fn if loss_fn is not None else _label_objective(model, y, loss, targeted, target)

    x = x.detach()
    delta = _random_start(x, eps_f, norm, generator) if random_start and eps_f > 0 else torch.zeros_like(x)
    x_adv = (x + delta).clamp_(0.0, 1.0)
    velocity = torch.zeros_like(x) if momentum else None
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            value = objective(x_adv)
            if value.dim() != 1 or value.shape[0] != x.shape[0]:
                raise ValueError(f"the PGD objective must return one loss per sample, got shape {tuple(value.shape)}")
            (grad,) = torch.autograd.grad(value.sum(), x_adv, allow_unused=True)
        with torch.no_grad():
            if grad is None:
                grad = torch.zeros_like(x)
            direction = _ascent_direction(grad, norm)
            if velocity is not None:
                velocity = momentum * velocity + direction
                direction = velocity.sign()
            x_adv = x_adv.detach() + alpha * direction
            x_adv = _project(x_adv, x, eps_f, norm)
    return x_adv.detach()


def _label_objective(model: nn.Module, y, loss: str, targeted: bool, target) -> LossFn:
    if targeted:
        if target is None:
            raise ValueError("a targeted PGD attack needs `target` labels")
        labels = target
    else:
        if y is None:
            raise ValueError("PGD needs labels `y` (or a custom `loss_fn`)")
        labels = y

    def objective(x_adv: torch.Tensor) -> torch.Tensor:
        logits = model(x_adv)
        if loss == "ce":
            ce = F.cross_entropy(logits, labels, reduction="none")
            return -ce if targeted else ce
        margin = margin_loss(logits, labels)
        return -margin if targeted else margin

    return objective


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    if norm == "Linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _per_sample_l2(direction).clamp_min(1e-12)
    dims = x[0].numel()
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return direction * eps * radius.pow(1.0 / dims)  # uniform in the l2 ball


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return grad.sign()
    return grad / _per_sample_l2(grad).clamp_min(1e-12)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    delta = x_adv - x
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / _per_sample_l2(delta).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale
    return (x + delta).clamp(0.0, 1.0)


def _per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))
