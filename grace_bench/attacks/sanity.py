"""Sanity checks for adversarial evaluation, in the spirit of AutoAttack's ``checks`` module.

Two invariants must hold and raise ``AttackInvariantError`` when broken: robust flags are a subset of
the clean flags (clean errors count as non-robust), and at eps = 0 robust equals clean. The other checks
only warn (``warnings.warn`` plus a returned list of messages): outputs that look like probabilities
instead of logits, zero input gradients, a random forward pass, and a black-box attack (Square)
succeeding where the white-box attacks failed, which points to gradient masking.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grace_bench.errors import UserError

WHITE_BOX = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "pgd")
BLACK_BOX = ("square",)


class AttackInvariantError(RuntimeError):
    """An adversarial-evaluation invariant does not hold; the numbers must not be reported."""


class AttackSanityWarning(UserWarning):
    """A sign that the adversarial evaluation may be unreliable."""


def check_invariants(robust: torch.Tensor, clean: torch.Tensor, eps: float) -> None:
    """Raise unless ``robust`` implies ``clean`` for every example, and ``robust == clean`` when ``eps == 0``."""
    robust, clean = robust.bool().cpu(), clean.bool().cpu()
    if robust.shape != clean.shape:
        raise AttackInvariantError(f"robust flags {tuple(robust.shape)} and clean flags {tuple(clean.shape)} differ")
    bad = robust & ~clean
    if bad.any():
        raise AttackInvariantError(f"{int(bad.sum())} examples are robust but misclassified when clean")
    if eps == 0 and not torch.equal(robust, clean):
        raise AttackInvariantError(f"at eps=0 {int((robust != clean).sum())} examples changed prediction")


def check_logits_not_probabilities(logits: torch.Tensor, tol: float = 1e-5) -> str | None:
    """A message if every row lies in [0, 1] and sums to 1 (softmax outputs instead of logits)."""
    logits = logits.detach().float()
    rows_sum_to_one = ((logits.sum(dim=-1) - 1).abs() < tol).all()
    if bool(rows_sum_to_one) and logits.min() > -tol and logits.max() < 1 + tol:
        return "the model outputs look like probabilities (rows in [0,1] summing to 1); attacks need logits"
    return None


def check_deterministic(model: nn.Module, x: torch.Tensor, repeats: int = 3, tol: float = 1e-4) -> str | None:
    """A message if repeated forward passes on the same input disagree (a randomised defence or dropout)."""
    with torch.no_grad():
        outputs = [model(x).float() for _ in range(repeats)]
    ref = F.normalize(outputs[0].flatten(1), dim=1)
    worst = max(float((F.normalize(o.flatten(1), dim=1) - ref).norm(dim=1).max()) for o in outputs[1:])
    if worst > tol:
        return (f"the forward pass is random (outputs differ by up to {worst:.2e} on the same input); "
                "use eval mode, or aa-rand (EOT) for a randomised defence")
    return None


def check_nonzero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """A message if some examples have an all-zero input gradient of the cross-entropy."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:
        return f"all {x.shape[0]} checked examples have zero input gradients; gradient-based attacks are unreliable"
    zero = int((grad.flatten(1).abs().sum(dim=1) == 0).sum())
    if zero:
        return (f"{zero} of {x.shape[0]} checked examples have zero input gradients; "
                "gradient-based attacks are unreliable (gradient masking?)")
    return None


def check_gradient_masking(cascade: Mapping[str, float], alpha: float = 0.002) -> str | None:
    """A message if a black-box attack lowered robust accuracy by more than ``alpha`` after white-box attacks.

    ``cascade`` maps ``"clean"`` and each attack, in run order, to the robust accuracy after it.
    """
    previous, seen_white_box = None, False
    for name, acc in cascade.items():
        if name in BLACK_BOX and seen_white_box and previous is not None and previous - acc > alpha:
            return (f"{name} (black-box) lowered robust accuracy from {previous:.4f} to {acc:.4f} after the "
                    "white-box attacks failed: likely gradient masking; try more restarts or an adaptive attack")
        seen_white_box = seen_white_box or name in WHITE_BOX
        previous = acc
    return None


def check_pixel_range(x: torch.Tensor) -> None:
    """Raise ``UserError`` unless the images lie in [0, 1] (attacks work in pixel space, before Normalize)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise UserError(f"attack inputs span [{lo:.3g}, {hi:.3g}], not [0, 1]; pass pixel-space images "
                        "(normalisation belongs inside the classifier)")


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, expect_random: bool = False) -> list[str]:
    """Run the model-level checks on one batch; return (and warn) the messages of those that fire.

    ``expect_random`` skips the randomness check (AutoAttack's ``rand`` version targets random defences).
    """
    with torch.no_grad():
        logits = model(x)
    found = [
        check_logits_not_probabilities(logits),
        None if expect_random else check_deterministic(model, x),
        check_nonzero_gradients(model, x, y),
    ]
    return emit([m for m in found if m])


def emit(messages: Sequence[str]) -> list[str]:
    """``warnings.warn`` each message as an ``AttackSanityWarning``; return them as a list."""
    for message in messages:
        warnings.warn(message, AttackSanityWarning, stacklevel=3)
    return list(messages)
