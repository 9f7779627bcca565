"""Sharpness of the loss in weight space: average-case and worst-case (m-sharpness), plain or adaptive.

Definitions (``L`` = mean CE over the fixed data; ``w`` = the parameter group, flattened):
- average-case: ``E_delta[L(w + delta)] - L(w)``, ``delta`` uniform on the L2 sphere of radius rho
  (a normalised Gaussian), estimated from ``num_samples`` draws with a std err. The first-order term
  ``g . delta`` (``g`` the gradient at ``w``) has mean zero on the symmetric sphere but dominates the
  variance of single draws at small rho, so by default each draw uses ``g . delta`` as a control
  variate, ``L(w + delta) - g . delta - L(w)`` (one gradient for all draws); ``antithetic`` pairs,
  ``(L(w + delta) + L(w - delta)) / 2 - L(w)``, cancel it too at two forward passes a draw. Both keep
  the expectation; ``none`` is the plain estimator.
- worst-case m-sharpness (Foret et al. 2021; Andriushchenko et al. 2023): the data is split into
  disjoint chunks of ``m`` samples; for each, ``max_{||delta||_2 <= rho} L_chunk(w + delta) - L_chunk(w)``
  is found by PGD in weight space (normalised-gradient ascent steps, projection onto the ball, the
  best iterate kept); the result is the sample-weighted mean over chunks. ``m=None``: one chunk.
  Without a random start every rho's first step is the same (loss and gradient at ``w``): it is
  computed once per chunk and shared.
- adaptive (Kwon et al. 2021): ``delta = |w| * eps`` elementwise with ``eps`` on the sphere/ball of
  radius rho, i.e. the perturbation is measured relative to each weight's magnitude.
Every result records which definition it used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from grace_bench.errors import UserError
from grace_bench.geometry.losses import (
    Batch,
    LossFn,
    NamedParams,
    as_batches,
    eval_mode,
    grad_only_for,
    loss_and_accuracy,
    mean_loss,
)
from grace_bench.geometry.losses import num_samples as count_samples

Reduction = Literal["control", "antithetic", "none"]
REDUCTIONS = ("control", "antithetic", "none")


_ESTIMATORS = {"control": "; each draw L(w+delta) - g.delta (first-order control variate, mean zero)",
               "antithetic": "; each draw an antithetic pair (L(w+delta) + L(w-delta))/2", "none": ""}


def describe(kind: str, adaptive: bool, m: int | None = None, steps: int | None = None,
             variance_reduction: Reduction = "none") -> str:
    """One-line statement of the sharpness definition used."""
    ball = "||delta / |w| ||_2" if adaptive else "||delta||_2"
    if kind == "average":
        how = _ESTIMATORS[variance_reduction]
        return f"E[L(w+delta)] - L(w), delta uniform on the sphere {ball} = rho (adaptive={adaptive}){how}"
    chunk = "the whole subset" if m is None else f"chunks of m={m} samples"
    return (f"mean over {chunk} of max_{{{ball} <= rho}} L(w+delta) - L(w), PGD in weight space with "
            f"{steps} normalised-gradient steps (adaptive={adaptive})")


def _check_rho(rho_grid: Sequence[float]) -> list[float]:
    rhos = [float(r) for r in rho_grid]
    if not rhos or any(not math.isfinite(r) or r < 0 for r in rhos):
        raise UserError(f"rho_grid must be a non-empty list of non-negative numbers, got {list(rho_grid)}")
    return rhos


@contextmanager
def perturbed(params: Sequence[nn.Parameter], deltas: Sequence[torch.Tensor]) -> Iterator[None]:
    """Add ``deltas`` to ``params`` in place; the exact original values are restored on exit."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, d in zip(params, deltas):
                p.add_(d)
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _norm(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(t.double().pow(2).sum() for t in ts))


def average_sharpness(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    params: NamedParams,
    rho_grid: Sequence[float],
    *,
    num_samples: int = 10,
    adaptive: bool = False,
    variance_reduction: Reduction = "control",
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    progress: bool = False,
) -> dict:
    """Average-case sharpness for each rho (mean and std err over ``num_samples`` random directions).

    ``variance_reduction``: ``control`` (one gradient, then one forward pass per direction), ``antithetic``
    (``+delta`` and ``-delta``: two forward passes per direction) or ``none``; see the module docstring.
    ``samples`` holds one value per direction, whose mean and std err are the reported ones.
    """
    rhos = _check_rho(rho_grid)
    if num_samples < 1:
        raise UserError(f"num_samples must be at least 1, got {num_samples}")
    if variance_reduction not in REDUCTIONS:
        raise UserError(f"unknown variance reduction '{variance_reduction}'; use {', '.join(REDUCTIONS)}")
    t0 = time.perf_counter()
    ps = [p for _, p in params]
    batches = as_batches(data, device=ps[0].device)
    gen = torch.Generator(device=ps[0].device).manual_seed(int(seed))
    with eval_mode(model):
        base, _ = loss_and_accuracy(model, batches, loss_fn)
        grads = None
        if variance_reduction == "control" and any(r > 0 for r in rhos):
            with grad_only_for(model, ps), torch.enable_grad():
                grads = torch.autograd.grad(mean_loss(model, batches, loss_fn), ps, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, ps)]
        values, ses, raw = [], [], []
        bar = tqdm(total=len(rhos) * num_samples, desc="average sharpness", disable=not progress, leave=False)
        for rho in rhos:
            diffs = []
            for _ in range(num_samples):
                z = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in ps]
                scale = rho / float(_norm(z))
                deltas = [zi * scale * (p.detach().abs() if adaptive else 1.0) for zi, p in zip(z, ps)]
                with perturbed(ps, deltas):
                    loss, _ = loss_and_accuracy(model, batches, loss_fn)
                if variance_reduction == "antithetic":
                    with perturbed(ps, [-d for d in deltas]):
                        loss = 0.5 * (loss + loss_and_accuracy(model, batches, loss_fn)[0])
                elif grads is not None:
                    loss -= float(sum((g.double() * d.double()).sum() for g, d in zip(grads, deltas)))
                diffs.append(loss - base)
                bar.update(1)
            arr = np.asarray(diffs)
            values.append(float(arr.mean()))
            ses.append(float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan"))
            raw.append(diffs)
        bar.close()
    return {
        "kind": "average",
        "adaptive": adaptive,
        "variance_reduction": variance_reduction,
        "definition": describe("average", adaptive, variance_reduction=variance_reduction),
        "rho": rhos,
        "sharpness": values,
        "sharpness_se": ses,
        "samples": raw,
        "base_loss": base,
        "num_samples": num_samples,
        "num_evaluations": num_samples * (2 if variance_reduction == "antithetic" else 1),
        "num_gradients": int(grads is not None),
        "num_data": count_samples(batches),
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
    }


def _chunks(batches: list[Batch], m: int | None) -> list[list[Batch]]:
    if m is None:
        return [batches]
    if m < 1:
        raise UserError(f"m must be at least 1, got {m}")
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return [[(x[i : i + m], y[i : i + m])] for i in range(0, y.shape[0], m)]


def _loss_and_grads(model: nn.Module, chunk: list[Batch], ps: list[nn.Parameter], loss_fn: LossFn,
                    grads: bool = True) -> tuple[float, list | None]:
    """The chunk's mean loss and (when ``grads``) its gradients w.r.t. ``ps`` at the current weights."""
    with torch.enable_grad():
        loss = mean_loss(model, chunk, loss_fn)
        g = list(torch.autograd.grad(loss, ps, allow_unused=True)) if grads else None
    return float(loss.detach()), g


def _pgd_max(
    model: nn.Module,
    chunk: list[Batch],
    ps: list[nn.Parameter],
    rho: float,
    steps: int,
    step_size: float,
    adaptive: bool,
    random_start: bool,
    gen: torch.Generator,
    loss_fn: LossFn,
    first: tuple[float, list] | None = None,
) -> float:
    """Largest chunk loss found by PGD over ``||eps||_2 <= rho`` (delta = eps, or |w| * eps when adaptive).

    ``first``: the loss and gradients at ``eps = 0`` (``_loss_and_grads``), reused instead of recomputed
    when the run starts there (no random start).
    """
    scales = [p.detach().abs() if adaptive else None for p in ps]
    eps = [torch.zeros_like(p) for p in ps]
    if random_start and rho > 0:
        z = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in ps]
        r = rho * float(torch.rand((), generator=gen, device=ps[0].device))
        eps = [zi * (r / float(_norm(z))) for zi in z]
        first = None
    best = -math.inf
    for step in range(steps + 1):
        if step == 0 and first is not None:
            loss, grads = first
        else:
            deltas = [e * s if s is not None else e for e, s in zip(eps, scales)]
            with perturbed(ps, deltas):
                loss, grads = _loss_and_grads(model, chunk, ps, loss_fn, grads=step < steps)
        best = max(best, loss)
        if grads is None or rho == 0 or step == steps:
            break
        grads = [torch.zeros_like(p) if g is None else (g * s if s is not None else g)
                 for g, p, s in zip(grads, ps, scales)]
        gnorm = float(_norm(grads))
        if gnorm == 0.0:
            break
        eps = [e + g * (step_size / gnorm) for e, g in zip(eps, grads)]
        enorm = float(_norm(eps))
        if enorm > rho:
            eps = [e * (rho / enorm) for e in eps]
    return best


def worst_case_sharpness(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    params: NamedParams,
    rho_grid: Sequence[float],
    *,
    m: int | None = None,
    steps: int = 10,
    step_size: float | None = None,
    adaptive: bool = False,
    random_start: bool = False,
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
    progress: bool = False,
) -> dict:
    """Worst-case m-sharpness for each rho by PGD in weight space (step size ``2.5 rho / steps`` by default)."""
    rhos = _check_rho(rho_grid)
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    t0 = time.perf_counter()
    ps = [p for _, p in params]
    batches = as_batches(data, device=ps[0].device)
    chunks = _chunks(batches, m)
    gen = torch.Generator(device=ps[0].device).manual_seed(int(seed))
    total = count_samples(batches)
    values = []
    values = [0.0] * len(rhos)
    bases = []
    with eval_mode(model), grad_only_for(model, ps):
        bar = tqdm(total=len(rhos) * len(chunks), desc="worst-case sharpness", disable=not progress, leave=False)
        for c in chunks:  # chunk by chunk, so that one chunk's first step serves every rho
            first = _loss_and_grads(model, c, ps, loss_fn, grads=not random_start and any(r > 0 for r in rhos))
            bases.append(first[0])
            for i, rho in enumerate(rhos):
                eta = step_size if step_size is not None else 2.5 * rho / steps
                worst = _pgd_max(model, c, ps, rho, steps, eta, adaptive, random_start, gen, loss_fn, first=first)
                values[i] += (worst - first[0]) * count_samples(c) / total
                bar.update(1)
        bar.close()
    base = sum(b * count_samples(c) / total for b, c in zip(bases, chunks))
    return {
        "kind": "worst",
        "adaptive": adaptive,
        "definition": describe("worst", adaptive, m, steps),
        "rho": rhos,
        "sharpness": values,
        "base_loss": base,
        "m": m,
        "num_chunks": len(chunks),
        "steps": steps,
        "step_size": step_size if step_size is not None else "2.5*rho/steps",
        "random_start": random_start,
        "num_data": total,
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
    }
