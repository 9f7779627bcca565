"""Hessian diagnostics by Hessian-vector products: top eigenvalues, trace, spectral density, layer curvature.

``H`` is the Hessian of the mean CE over a fixed list of batches with respect to one parameter group
(see ``losses.select_params``). HVPs use double backward under the math SDPA kernel. Every estimator
returns a plain dict that records its seed, its HVP count and how it converged.

Definitions
- top-k eigenvalues: Lanczos with full reorthogonalisation; Ritz pair i has converged when its
  residual ``r_i = |beta_m * s_{m,i}|`` (= ||H y - theta y||) is at most ``tol * |theta_i|``, which
  guarantees an eigenvalue within ``tol * |theta_i|`` (PyHessian's test, a small relative change
  between power iterations, guarantees nothing).
- trace: Hutchinson, ``mean(v^T H v)`` over Rademacher ``v``, std err = sample std / sqrt(n);
  Hutch++ (Meyer et al. 2021): exact trace on a sketched range plus Hutchinson on the rest.
- ``||H||_F / sqrt(d)``: from ``E ||H v||^2 = tr(H^2)`` over the same Rademacher ``v``.
- layer curvature ``kappa_l = tr(H_ll) / d_l``: ``E[v_l . (H v)_l] = tr(H_ll)``, so one HVP per sample
  gives every diagonal block.
- spectral density: stochastic Lanczos quadrature (Ghorbani et al. 2019); nodes are Ritz values,
  weights the squared first components of the Ritz vectors, smoothed with a Gaussian of width sigma.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
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
    math_sdpa,
    num_samples,
)

Which = Literal["LA", "LM", "SA"]


class HessianOperator:
    """The loss Hessian w.r.t. a parameter group as a matvec on flat vectors of length ``dim``.

    With ``cache_graph`` (default for a single batch) the gradient graph is built once and every HVP is
    one extra backward, as in PyHessian; otherwise each HVP rebuilds it batch by batch (bounded memory).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Batch | Sequence[Batch],
        params: NamedParams,
        loss_fn: LossFn = F.cross_entropy,
        *,
        cache_graph: bool | None = None,
    ) -> None:
        if not params:
            raise UserError("the Hessian needs at least one parameter; choose a non-empty --group")
        self.model = model
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        self.batches = as_batches(data, device=self.params[0].device)
        self.loss_fn = loss_fn
        self.shapes = [tuple(p.shape) for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = int(sum(self.numels))
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.num_samples = num_samples(self.batches)
        self.cache_graph = len(self.batches) == 1 if cache_graph is None else bool(cache_graph)
        self.num_hvp = 0
        self._cached: tuple[list[torch.Tensor], list[int]] | None = None

    def slices(self) -> dict[str, slice]:
        """Offsets of each parameter inside a flat vector."""
        out, start = {}, 0
        for name, n in zip(self.names, self.numels):
            out[name] = slice(start, start + n)
            start += n
        return out

    def _grads_with_graph(self, batches: Sequence[Batch], weight: float) -> tuple[list[torch.Tensor], list[int]]:
        with eval_mode(self.model), grad_only_for(self.model, self.params), math_sdpa(), torch.enable_grad():
            loss = None
            for x, y in batches:
                term = self.loss_fn(self.model(x), y) * (y.shape[0] * weight)
                loss = term if loss is None else loss + term
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return [grads[i] for i in live], live

    def _hvp_from(self, grads: list[torch.Tensor], live: list[int], vs: list[torch.Tensor], retain: bool) -> list:
        if not live:
            return [None] * len(self.params)
        hv = torch.autograd.grad(
            grads, [self.params[i] for i in live], grad_outputs=[vs[i] for i in live],
            retain_graph=retain, allow_unused=True,
        )
        out: list[torch.Tensor | None] = [None] * len(self.params)
        for i, h in zip(live, hv):
            out[i] = h
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H @ v`` for a flat vector ``v`` of length ``dim``."""
        if v.shape != (self.dim,):
            raise ValueError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        vs = [c.view(s) for c, s in zip(v.to(self.dtype).split(self.numels), self.shapes)]
        total = [torch.zeros_like(p) for p in self.params]
        if self.cache_graph:
            if self._cached is None:
                self._cached = self._grads_with_graph(self.batches, 1.0 / self.num_samples)
            parts = [self._hvp_from(*self._cached, vs, retain=True)]
        else:
            parts = []
            for batch in self.batches:
                grads, live = self._grads_with_graph([batch], 1.0 / self.num_samples)
                parts.append(self._hvp_from(grads, live, vs, retain=False))
        for part in parts:
            for t, h in zip(total, part):
                if h is not None:
                    t.add_(h.detach())
        self.num_hvp += 1
        return torch.cat([t.reshape(-1) for t in total])

    def release(self) -> None:
        """Free the cached gradient graph."""
        self._cached = None


def build_operator(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    params: NamedParams,
    loss_fn: LossFn = F.cross_entropy,
    *,
    cache_graph: bool | None = None,
) -> HessianOperator:
    """``HessianOperator`` for ``model`` on ``data`` w.r.t. ``params`` (see ``losses.select_params``)."""
    return HessianOperator(model, data, params, loss_fn, cache_graph=cache_graph)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def rademacher(n: int, dim: int, *, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """``n`` Rademacher (+-1) vectors of length ``dim`` as rows."""
    r = torch.randint(0, 2, (n, dim), generator=generator, device=device)
    return (r * 2 - 1).to(dtype)


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Classical Gram-Schmidt applied twice (numerically as good as modified GS, and one matmul each)."""
    if basis is None or basis.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


class _Basis:
    """Lanczos vectors as rows of a matrix that grows by doubling (no max_iter x dim preallocation)."""

    def __init__(self, dim: int, device, dtype, capacity: int) -> None:
        self.rows = torch.empty((max(capacity, 1), dim), device=device, dtype=dtype)
        self.size = 0

    def append(self, v: torch.Tensor) -> None:
        if self.size == self.rows.shape[0]:
            self.rows = torch.cat([self.rows, torch.empty_like(self.rows)])
        self.rows[self.size] = v
        self.size += 1

    def view(self) -> torch.Tensor:
        return self.rows[: self.size]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


def _tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> np.ndarray:
    m = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if m > 1:
        off = np.asarray(betas[: m - 1], dtype=np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return t


def _order(theta: np.ndarray, which: Which) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")
    raise UserError(f"unknown eigenvalue order '{which}'; use LA (largest), SA (smallest) or LM (largest magnitude)")


def lanczos_eigenvalues(
    op: HessianOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    which: Which = "LA",
    seed: int = 0,
    return_vectors: bool = False,
    progress: bool = False,
) -> dict:
    """Top-``k`` eigenvalues of ``H`` by Lanczos with full reorthogonalisation.

    Stops once the ``k`` wanted Ritz pairs have relative residual ``<= tol`` (then each Ritz value is
    within ``tol * |theta|`` of an eigenvalue; in practice the error is about ``r^2 / gap``, far smaller),
    or after ``max_iter`` HVPs. Returns eigenvalues (in the ``which`` order), residuals, HVP count and
    convergence info; ``eigenvectors`` (k, dim) when ``return_vectors``.
    """
    if k < 1:
        raise UserError(f"--top-k must be at least 1, got {k}")
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    m_max = min(int(max_iter), op.dim)
    if m_max < k:
        raise UserError(f"--lanczos-iter ({max_iter}) must be at least --top-k ({k}) and the group size ({op.dim})")
    basis = _Basis(op.dim, op.device, op.dtype, min(m_max, k + 16))
    alphas: list[float] = []
    betas: list[float] = []
    v = torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
    v = v / v.norm()
    converged, restarts = False, 0
    theta = resid = s_mat = idx = None
    bar = tqdm(total=m_max, desc="lanczos", disable=not progress, unit="hvp", leave=False)
    for j in range(m_max):
        basis.append(v)
        w = op.matvec(v)
        alpha = float(torch.dot(w, v))
        w = w - alpha * v
        if j > 0 and betas[-1] != 0.0:
            w = w - betas[-1] * basis[j - 1]
        w = _orthogonalise(w, basis.view())
        beta = float(w.norm())
        alphas.append(alpha)
        theta, s_mat = np.linalg.eigh(_tridiagonal(alphas, betas))
        idx = _order(theta, which)[:k]
        resid = np.abs(beta * s_mat[-1, idx])
        bar.update(1)
        scale = max(float(np.max(np.abs(theta))), 1e-30)
        if j + 1 >= k and np.all(resid <= tol * np.maximum(np.abs(theta[idx]), 1e-12 * scale)):
            converged = True
            break
        if j + 1 == m_max:
            break
        if beta <= 1e-10 * scale:  # invariant subspace: restart from a fresh direction orthogonal to the basis
            restarts += 1
            w = _orthogonalise(torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype), basis.view())
            betas.append(0.0)
            v = w / w.norm()
        else:
            betas.append(beta)
            v = w / beta
    bar.close()
    m = len(alphas)
    out = {
        "method": "lanczos-full-reorth",
        "which": which,
        "k": k,
        "eigenvalues": [float(theta[i]) for i in idx],
        "residuals": [float(r) for r in resid],
        "relative_residuals": [float(r / max(abs(theta[i]), 1e-30)) for r, i in zip(resid, idx)],
        "converged": bool(converged),
        "iterations": m,
        "restarts": restarts,
        "num_hvp": op.num_hvp - hvp0,
        "tol": tol,
        "max_iter": max_iter,
        "seed": seed,
        "ritz_values": [float(t) for t in theta],
        "wall_time_s": time.perf_counter() - t0,
    }
    if return_vectors:
        coeffs = torch.as_tensor(s_mat[:, idx], device=op.device, dtype=op.dtype)
        out["eigenvectors"] = (basis.view()[:m].T @ coeffs).T.contiguous()
    return out


def power_iteration(
    op: HessianOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Top-``k`` largest-magnitude eigenvalues by power iteration with deflation (PyHessian's algorithm).

    Each eigenvalue stops when the relative change of the Rayleigh quotient is below ``tol``.
    Kept for comparison with Lanczos.
    """
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    found: list[torch.Tensor] = []
    values, iters, flags = [], [], []
    for _ in tqdm(range(k), desc="power iteration", disable=not progress, leave=False):
        v = torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
        v = v / v.norm()
        basis = torch.stack(found) if found else None
        value, ok, n = None, False, 0
        for step in range(1, max_iter + 1):
            n = step
            v = _orthogonalise(v, basis)
            v = v / v.norm()
            hv = op.matvec(v)
            new = float(torch.dot(hv, v))
            v = hv / hv.norm().clamp_min(1e-30)
            if value is not None and abs(value - new) / (abs(value) + 1e-6) < tol:
                value, ok = new, True
                break
            value = new
        values.append(value)
        iters.append(n)
        flags.append(ok)
        v = _orthogonalise(v, basis)
        found.append(v / v.norm())
    return {
        "method": "power-iteration-deflation",
        "k": k,
        "eigenvalues": values,
        "iterations": iters,
        "converged": all(flags),
        "num_hvp": op.num_hvp - hvp0,
        "tol": tol,
        "max_iter": max_iter,
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
    }


def layer_key(name: str, granularity: str = "block") -> str:
    """The layer a parameter belongs to: ``block`` (transformer block, else module), ``module`` or ``param``."""
    if granularity == "param":
        return name
    if granularity == "block":
        match = re.match(r"(.*resblocks\.\d+)\.", name)
        if match:
            return match.group(1)
    if granularity in ("block", "module"):
        for suffix in (".weight", ".bias", "_weight", "_bias"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name
    raise UserError(f"unknown layer granularity '{granularity}'; use block, module or param")


def _layer_groups(op: HessianOperator, granularity: str) -> dict[str, list[slice]]:
    groups: dict[str, list[slice]] = {}
    for name, sl in op.slices().items():
        groups.setdefault(layer_key(name, granularity), []).append(sl)
    return groups


def _mean_se(samples: np.ndarray) -> tuple[float, float]:
    n = samples.shape[0]
    mean = float(samples.mean())
    se = float(samples.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


def hutchinson(
    op: HessianOperator,
    num_samples: int = 100,
    *,
    seed: int = 0,
    granularity: str | None = "block",
    progress: bool = False,
) -> dict:
    """Hutchinson trace with std err, ``||H||_F/sqrt(d)`` and per-layer ``kappa_l = tr(H_ll)/d_l``.

    All three come from the same ``num_samples`` Rademacher HVPs. ``granularity=None`` skips layers.
    """
    if num_samples < 2:
        raise UserError(f"--trace-samples must be at least 2 for an error bar, got {num_samples}")
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    groups = _layer_groups(op, granularity) if granularity else {}
    quad = np.empty(num_samples)
    sq = np.empty(num_samples)
    per_layer = {key: np.empty(num_samples) for key in groups}
    for i in tqdm(range(num_samples), desc="hutchinson", disable=not progress, leave=False, unit="hvp"):
        v = rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0]
        hv = op.matvec(v)
        prod = v * hv
        quad[i] = float(prod.sum())
        sq[i] = float(torch.dot(hv, hv))
        for key, sls in groups.items():
            per_layer[key][i] = float(sum(prod[sl].sum() for sl in sls))
    trace, trace_se = _mean_se(quad)
    tr_h2, tr_h2_se = _mean_se(sq)
    fro = math.sqrt(max(tr_h2, 0.0))
    layers = {}
    for key, sls in groups.items():
        d_l = int(sum(sl.stop - sl.start for sl in sls))
        tr_l, se_l = _mean_se(per_layer[key])
        layers[key] = {"dim": d_l, "trace": tr_l, "trace_se": se_l, "kappa": tr_l / d_l, "kappa_se": se_l / d_l}
    return {
        "method": "hutchinson-rademacher",
        "trace": trace,
        "trace_se": trace_se,
        "frobenius_norm": fro,
        "frobenius_norm_se": tr_h2_se / (2 * fro) if fro > 0 else float("nan"),
        "frobenius_over_sqrt_dim": fro / math.sqrt(op.dim),
        "frobenius_over_sqrt_dim_se": (tr_h2_se / (2 * fro) if fro > 0 else float("nan")) / math.sqrt(op.dim),
        "dim": op.dim,
        "num_samples": num_samples,
        "num_hvp": op.num_hvp - hvp0,
        "granularity": granularity,
        "layers": layers,
        "seed": seed,
        "samples": quad.tolist(),
        "wall_time_s": time.perf_counter() - t0,
    }


def hutch_plus_plus(op: HessianOperator, num_matvecs: int = 99, *, seed: int = 0, progress: bool = False) -> dict:
    """Hutch++ trace (Meyer et al. 2021) with ``num_matvecs`` HVPs: ``tr(Q^T H Q)`` + Hutchinson on ``(I-QQ^T)``.

    ``trace_se`` is the std err of the residual Hutchinson part (conditional on the sketch ``Q``).
    """
    if num_matvecs < 6:
        raise UserError(f"Hutch++ needs at least 6 matvecs, got {num_matvecs}")
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    s = min(num_matvecs // 3, op.dim)
    n_g = num_matvecs - 2 * s
    bar = tqdm(total=2 * s + n_g, desc="hutch++", disable=not progress, leave=False, unit="hvp")
    sketch = rademacher(s, op.dim, generator=gen, device=op.device, dtype=op.dtype)
    ys = []
    for row in sketch:
        ys.append(op.matvec(row))
        bar.update(1)
    del sketch
    q, _ = torch.linalg.qr(torch.stack(ys, dim=1))  # (dim, s)
    del ys
    low_rank = 0.0
    for j in range(q.shape[1]):
        low_rank += float(torch.dot(q[:, j], op.matvec(q[:, j].contiguous())))
        bar.update(1)
    resid = np.empty(n_g)
    for i in range(n_g):
        g = rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0]
        g = g - q @ (q.T @ g)
        resid[i] = float(torch.dot(g, op.matvec(g)))
        bar.update(1)
    bar.close()
    res_mean, res_se = _mean_se(resid) if n_g > 1 else (float(resid.mean()) if n_g else 0.0, float("nan"))
    return {
        "method": "hutch++",
        "trace": low_rank + res_mean,
        "trace_se": res_se,
        "low_rank_part": low_rank,
        "residual_part": res_mean,
        "sketch_size": s,
        "num_hvp": op.num_hvp - hvp0,
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
    }


def _lanczos_quadrature(op: HessianOperator, v0: torch.Tensor, num_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and quadrature weights (squared first eigenvector components) of an ``num_iter``-step run."""
    m_max = min(num_iter, op.dim)
    basis = _Basis(op.dim, op.device, op.dtype, m_max)
    alphas: list[float] = []
    betas: list[float] = []
    v = v0 / v0.norm()
    for j in range(m_max):
        basis.append(v)
        w = op.matvec(v)
        alpha = float(torch.dot(w, v))
        w = w - alpha * v - (betas[-1] * basis[j - 1] if j > 0 else 0.0)
        w = _orthogonalise(w, basis.view())
        beta = float(w.norm())
        alphas.append(alpha)
        if j + 1 == m_max or beta <= 1e-10 * max(abs(a) for a in alphas):
            break  # invariant subspace: the quadrature is exact
        betas.append(beta)
        v = w / beta
    theta, s_mat = np.linalg.eigh(_tridiagonal(alphas, betas))
    return theta, s_mat[0] ** 2


def spectral_density(
    op: HessianOperator,
    *,
    num_runs: int = 4,
    num_iter: int = 64,
    seed: int = 0,
    grid_points: int = 1000,
    sigma: float | None = None,
    progress: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Eigenvalue density by stochastic Lanczos quadrature.

    ``num_runs`` Rademacher start vectors, ``num_iter`` Lanczos steps each. The density on a grid
    spanning the Ritz values (padded by 5%) is ``mean_runs sum_j w_j N(t; theta_j, sigma^2)``, with
    ``sigma`` defaulting to 1% of the spectral range. Returns (summary, arrays: grid, density, nodes,
    weights); ``trace_slq`` = d * mean_runs sum_j w_j theta_j.
    """
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    nodes, weights = [], []
    for _ in tqdm(range(num_runs), desc="SLQ", disable=not progress, leave=False, unit="run"):
        v0 = rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0]
        theta, w = _lanczos_quadrature(op, v0, num_iter)
        nodes.append(theta)
        weights.append(w)
    lo = min(float(t.min()) for t in nodes)
    hi = max(float(t.max()) for t in nodes)
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    sig = float(sigma) if sigma is not None else 0.01 * span
    grid = np.linspace(lo - 0.05 * span - 3 * sig, hi + 0.05 * span + 3 * sig, grid_points)
    density = np.zeros_like(grid)
    for theta, w in zip(nodes, weights):
        z = (grid[:, None] - theta[None, :]) / sig
        density += (np.exp(-0.5 * z**2) / (sig * math.sqrt(2 * math.pi))) @ w
    density /= num_runs
    trace = op.dim * float(np.mean([np.dot(w, t) for t, w in zip(nodes, weights)]))
    width = max(len(t) for t in nodes)
    node_arr = np.full((num_runs, width), np.nan)
    weight_arr = np.zeros((num_runs, width))
    for r, (t, w) in enumerate(zip(nodes, weights)):
        node_arr[r, : len(t)] = t
        weight_arr[r, : len(w)] = w
    summary = {
        "method": "stochastic-lanczos-quadrature",
        "num_runs": num_runs,
        "num_iter": num_iter,
        "sigma": sig,
        "grid_points": grid_points,
        "lambda_min_ritz": lo,
        "lambda_max_ritz": hi,
        "trace_slq": trace,
        "num_hvp": op.num_hvp - hvp0,
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
    }
    arrays = {"grid": grid, "density": density, "nodes": node_arr, "weights": weight_arr}
    return summary, arrays


def hessian_report(
    op: HessianOperator,
    *,
    top_k: int = 5,
    lanczos_iter: int = 100,
    tol: float = 1e-3,
    trace_samples: int = 100,
    hutchpp_matvecs: int = 0,
    slq_runs: int = 4,
    slq_iter: int = 64,
    power: bool = False,
    granularity: str = "block",
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Run the standard set (Lanczos top-k, Hutchinson + layers, optional Hutch++/power, SLQ); dict + arrays."""
    report: dict = {"dim": op.dim, "num_samples": op.num_samples, "num_batches": len(op.batches),
                    "params": len(op.names), "seed": seed}
    arrays: dict[str, np.ndarray] = {}
    steps = [("lanczos", True), ("power", power), ("hutchinson", trace_samples > 0),
             ("hutch++", hutchpp_matvecs > 0), ("density", slq_runs > 0)]
    for name, enabled in tqdm(steps, desc="hessian", disable=not progress, unit="step"):
        if not enabled:
            continue
        if on_step:
            on_step(name)
        if name == "lanczos":
            report["top_eigenvalues"] = lanczos_eigenvalues(op, top_k, max_iter=lanczos_iter, tol=tol, seed=seed,
                                                            progress=progress)
        elif name == "power":
            report["power_iteration"] = power_iteration(op, top_k, tol=tol, seed=seed, progress=progress)
        elif name == "hutchinson":
            hut = hutchinson(op, trace_samples, seed=seed + 1, granularity=granularity, progress=progress)
            arrays["hutchinson_samples"] = np.asarray(hut.pop("samples"))
            report["trace"] = hut
        elif name == "hutch++":
            report["trace_hutchpp"] = hutch_plus_plus(op, hutchpp_matvecs, seed=seed + 2, progress=progress)
        else:
            summary, dens = spectral_density(op, num_runs=slq_runs, num_iter=slq_iter, seed=seed + 3,
                                             progress=progress)
            report["density"] = summary
            arrays.update({f"density_{k}": v for k, v in dens.items()})
    report["num_hvp_total"] = op.num_hvp
    return report, arrays
