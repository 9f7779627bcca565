"""Hessian diagnostics by Hessian-vector products: top eigenvalues, trace, spectral density, layer curvature.

``H`` is the Hessian of the mean CE over a fixed list of batches with respect to one parameter group
(see ``losses.select_params``). HVPs use double backward under the math SDPA kernel. Every estimator
returns a plain dict that records its seed, its HVP count and how it converged.

Definitions
- top-k eigenvalues: Lanczos with full reorthogonalisation (``lanczos.LanczosRun``). Ritz pair i has
  converged when its estimated eigenvalue error ``min(r_i, r_i^2 / gap_i)`` is at most ``tol * |theta_i|``
  (``r_i = |beta_m s_{m,i}| = ||H y - theta y||``, ``gap_i`` the distance to the nearest other Ritz value;
  ``criterion="residual"`` asks ``r_i <= tol * |theta_i|``, a guaranteed but loose bound). PyHessian
  stops on a small relative change between power iterations, which guarantees nothing. The start
  vector defaults to the normalised loss gradient plus an equal-norm Gaussian vector: the gradient is
  a by-product of building the HVP graph and leans towards the top eigenvectors.
- trace: Hutchinson, ``mean(v^T H v)`` over Rademacher ``v``, std err = sample std / sqrt(n). With a
  Lanczos run to deflate (``hessian_report`` passes its top-k run) the Krylov part ``tr(V^T H V) = tr(T)``
  is exact and only ``P_perp H P_perp`` (``P_perp = I - V V^T``) is sampled, as in Hutch++ (Meyer et al.
  2021) with a sketch that costs nothing extra; the std err is that of the sampled part given ``V``.
  Hutch++ proper: exact trace on a sketched range plus Hutchinson on the rest.
- ``||H||_F / sqrt(d)``: from ``E ||H v||^2 = tr(H^2)`` over the same Rademacher ``v`` (deflated:
  ``||T||_F^2 + ||w||^2 + E ||H P_perp v||^2``).
- layer curvature ``kappa_l = tr(H_ll) / d_l``: ``E[v_l . (H v)_l] = tr(H_ll)``, so one HVP per sample
  gives every diagonal block (deflated: the block's share of the low-rank part plus ``E[v_l . (P_perp H
  P_perp v)_l]``).
- spectral density: stochastic Lanczos quadrature (Ghorbani et al. 2019); nodes are Ritz values,
  weights the squared first components of the Ritz vectors, smoothed with a Gaussian of width sigma.
  In ``hessian_report`` the first run is the top-k Lanczos run itself (Rademacher start), truncated to
  ``slq_iter`` steps, which is exactly the run SLQ would have made from that vector.
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
from grace_bench.geometry.lanczos import (
    Criterion,
    LanczosRun,
    Which,
    error_estimates,
    order,
    orthogonalise,
)
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

Start = Literal["gradient", "random", "rademacher"]


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
        self._cached: tuple[list, list[int]] | None = None  # (gradients with graph, indices that need it)

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
        return list(grads), live

    def _hvp_from(self, grads: list, live: list[int], vs: list[torch.Tensor], retain: bool) -> list:
        """``H v`` from the gradients (all of them; only the ``live`` ones depend on the parameters)."""
        if not live:
            return [None] * len(self.params)
        hv = torch.autograd.grad(
            [grads[i] for i in live], [self.params[i] for i in live], grad_outputs=[vs[i] for i in live],
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

    def gradient(self) -> torch.Tensor:
        """The flat loss gradient: free once the gradient graph is cached, else one backward per batch."""
        total = [torch.zeros_like(p) for p in self.params]
        if self.cache_graph:
            if self._cached is None:
                self._cached = self._grads_with_graph(self.batches, 1.0 / self.num_samples)
            for t, g in zip(total, self._cached[0]):
                if g is not None:
                    t += g.detach()
        else:
            with eval_mode(self.model), grad_only_for(self.model, self.params), math_sdpa(), torch.enable_grad():
                for x, y in self.batches:
                    loss = self.loss_fn(self.model(x), y) * (y.shape[0] / self.num_samples)
                    for t, g in zip(total, torch.autograd.grad(loss, self.params, allow_unused=True)):
                        if g is not None:
                            t += g
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


def _start_vector(op: HessianOperator, start: Start | torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, str]:
    if isinstance(start, torch.Tensor):
        return start.to(device=op.device, dtype=op.dtype).reshape(-1), "given"
    if start == "rademacher":
        return rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0], "rademacher"
    noise = torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
    if start == "random":
        return noise, "gaussian"
    if start != "gradient":
        raise UserError(f"unknown Lanczos start '{start}'; use gradient, random or rademacher")
    g = op.gradient()
    g_norm = float(g.norm())
    if not math.isfinite(g_norm) or g_norm == 0.0:
        return noise, "gaussian (zero gradient)"
    return g / g_norm + noise / noise.norm(), "gradient+gaussian"


def run_lanczos(
    op: HessianOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    which: Which = "LA",
    seed: int = 0,
    start: Start | torch.Tensor = "gradient",
    criterion: Criterion = "estimate",
    min_iter: int = 0,
    progress: bool = False,
) -> tuple[dict, LanczosRun]:
    """Top-``k`` Lanczos as in ``lanczos_eigenvalues``, also returning the run (basis, T) for reuse.

    Runs at least ``min_iter`` steps (e.g. for a shared SLQ run) and at most ``max(max_iter, min_iter)``.
    """
    if k < 1:
        raise UserError(f"--top-k must be at least 1, got {k}")
    order(np.zeros(1), which)  # unknown orders and criteria fail before any HVP
    error_estimates(np.zeros(1), np.zeros(1), np.zeros(1, dtype=int), criterion)
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    m_max = min(max(int(max_iter), int(min_iter)), op.dim)
    if m_max < k:
        raise UserError(f"--lanczos-iter ({max_iter}) must be at least --top-k ({k}) and the group size ({op.dim})")
    v0, start_name = _start_vector(op, start, gen)
    run = LanczosRun(op.matvec, v0, generator=gen, capacity=min(m_max, max(k + 16, int(min_iter))))
    converged_at = None
    bar = tqdm(total=m_max, desc="lanczos", disable=not progress, unit="hvp", leave=False)
    while True:
        run.step()
        bar.update(1)
        theta, s_mat, resid_all = run.ritz()
        idx = order(theta, which)[:k]
        resid = resid_all[idx]
        est = error_estimates(theta, resid, idx, criterion)
        scale = max(float(np.max(np.abs(theta))), 1e-30)
        ok = run.m >= k and bool(np.all(est <= tol * np.maximum(np.abs(theta[idx]), 1e-12 * scale)))
        if ok and converged_at is None:
            converged_at = run.m
        if (ok and run.m >= min_iter) or run.m >= m_max or run.exhausted:
            break
    bar.close()
    out = {
        "method": "lanczos-full-reorth",
        "which": which,
        "k": k,
        "eigenvalues": [float(theta[i]) for i in idx],
        "residuals": [float(r) for r in resid],
        "relative_residuals": [float(r / max(abs(theta[i]), 1e-30)) for r, i in zip(resid, idx)],
        "error_estimates": [float(e / max(abs(theta[i]), 1e-30)) for e, i in zip(est, idx)],
        "criterion": criterion,
        "converged": bool(ok),
        "converged_at": converged_at,
        "iterations": run.m,
        "restarts": run.restarts,
        "num_hvp": op.num_hvp - hvp0,
        "tol": tol,
        "max_iter": max_iter,
        "min_iter": min_iter,
        "start": start_name,
        "seed": seed,
        "ritz_values": [float(t) for t in theta],
        "wall_time_s": time.perf_counter() - t0,
    }
    return out, run


def lanczos_eigenvalues(
    op: HessianOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    which: Which = "LA",
    seed: int = 0,
    start: Start | torch.Tensor = "gradient",
    criterion: Criterion = "estimate",
    return_vectors: bool = False,
    progress: bool = False,
) -> dict:
    """Top-``k`` eigenvalues of ``H`` by Lanczos with full reorthogonalisation.

    Stops once the ``k`` wanted Ritz values have an estimated relative error ``<= tol`` (``criterion``;
    see the module docstring), or after ``max_iter`` HVPs. ``start``: ``gradient`` (loss gradient plus
    an equal-norm Gaussian vector), ``random`` (Gaussian), ``rademacher`` or a vector. Returns eigenvalues
    (in the ``which`` order), residuals, error estimates, HVP count and convergence info;
    ``eigenvectors`` (k, dim) when ``return_vectors`` (their error scales with ``r / gap``, not ``r^2 / gap``:
    use ``criterion="residual"`` for accurate vectors). The gradient for the start counts no HVP.
    """
    out, run = run_lanczos(op, k, max_iter=max_iter, tol=tol, which=which, seed=seed, start=start,
                           criterion=criterion, progress=progress)
    if return_vectors:
        theta, s_mat, _ = run.ritz()
        idx = order(theta, which)[:k]
        coeffs = torch.as_tensor(s_mat[:, idx], device=op.device, dtype=op.dtype)
        out["eigenvectors"] = (run.vectors().T @ coeffs).T.contiguous()
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
            v = orthogonalise(v, basis)
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
        v = orthogonalise(v, basis)
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


def _segment_ids(op: HessianOperator, groups: dict[str, list[slice]]) -> torch.Tensor:
    """For every coordinate of a flat vector, the index of its layer group (for ``index_add_``)."""
    seg = torch.empty(op.dim, dtype=torch.long, device=op.device)
    for gid, sls in enumerate(groups.values()):
        for sl in sls:
            seg[sl] = gid
    return seg


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
    deflate: LanczosRun | None = None,
    progress: bool = False,
) -> dict:
    """Hutchinson trace with std err, ``||H||_F/sqrt(d)`` and per-layer ``kappa_l = tr(H_ll)/d_l``.

    All three come from the same ``num_samples`` Rademacher HVPs. ``granularity=None`` skips layers.
    ``deflate`` (a Lanczos run on ``op``): its Krylov part is taken exactly and only the rest is sampled
    (see the module docstring); std errs are then those of the sampled part. ``samples`` holds the
    per-vector trace estimates (low-rank part included), whose mean is ``trace``.
    """
    if num_samples < 2:
        raise UserError(f"--trace-samples must be at least 2 for an error bar, got {num_samples}")
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    groups = _layer_groups(op, granularity) if granularity else {}
    basis = deflate.vectors() if deflate is not None and deflate.m > 0 else None
    if basis is not None:
        if basis.shape[1] != op.dim:
            raise ValueError("the deflation run belongs to an operator of another size")
        low_diag = deflate.low_rank_diagonal()
        low_trace = float(np.trace(deflate.tridiagonal()))
        low_fro2 = float((deflate.tridiagonal() ** 2).sum()) + deflate.beta**2
    else:
        low_diag, low_trace, low_fro2 = None, 0.0, 0.0
    quad = np.empty(num_samples)
    sq = np.empty(num_samples)
    per_layer = {key: np.empty(num_samples) for key in groups}
    segment = _segment_ids(op, groups) if groups else None
    for i in tqdm(range(num_samples), desc="hutchinson", disable=not progress, leave=False, unit="hvp"):
        v = rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0]
        u = v if basis is None else v - basis.T @ (basis @ v)
        hv = op.matvec(u)
        z = hv if basis is None else hv - basis.T @ (basis @ hv)
        prod = v * z  # sums to u . H u; per block to the block's share of the sampled part
        quad[i] = float(prod.sum())
        sq[i] = float(torch.dot(hv, hv))
        if groups:
            sums = torch.zeros(len(groups), device=op.device, dtype=prod.dtype).index_add_(0, segment, prod)
            for key, value in zip(groups, sums.tolist()):
                per_layer[key][i] = value
    trace, trace_se = _mean_se(quad)
    trace += low_trace
    tr_h2, tr_h2_se = _mean_se(sq)
    fro = math.sqrt(max(tr_h2 + low_fro2, 0.0))
    fro_se = tr_h2_se / (2 * fro) if fro > 0 else float("nan")
    layers = {}
    low_layer = [0.0] * len(groups)
    if groups and low_diag is not None:
        low_layer = torch.zeros(len(groups), device=op.device, dtype=low_diag.dtype).index_add_(
            0, segment, low_diag).tolist()
    for (key, sls), low_l in zip(groups.items(), low_layer):
        d_l = int(sum(sl.stop - sl.start for sl in sls))
        tr_l, se_l = _mean_se(per_layer[key])
        tr_l += low_l
        layers[key] = {"dim": d_l, "trace": tr_l, "trace_se": se_l, "kappa": tr_l / d_l, "kappa_se": se_l / d_l}
    out = {
        "method": "hutchinson-rademacher" + ("-deflated" if basis is not None else ""),
        "trace": trace,
        "trace_se": trace_se,
        "frobenius_norm": fro,
        "frobenius_norm_se": fro_se,
        "frobenius_over_sqrt_dim": fro / math.sqrt(op.dim),
        "frobenius_over_sqrt_dim_se": fro_se / math.sqrt(op.dim),
        "dim": op.dim,
        "num_samples": num_samples,
        "num_hvp": op.num_hvp - hvp0,
        "granularity": granularity,
        "layers": layers,
        "seed": seed,
        "samples": (quad + low_trace).tolist(),
        "wall_time_s": time.perf_counter() - t0,
    }
    if basis is not None:
        out["deflation"] = {"rank": int(basis.shape[0]), "low_rank_trace": low_trace,
                            "source": "Krylov basis of the top-eigenvalue Lanczos run (no extra HVPs)"}
    return out


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
    run = LanczosRun(op.matvec, v0, generator=_generator(op.device, 0), capacity=min(num_iter, op.dim),
                     restart=False)
    while run.m < min(num_iter, op.dim) and not run.exhausted:
        run.step()  # an invariant subspace ends the run early: the quadrature is then exact
    return run.quadrature(num_iter)


def spectral_density(
    op: HessianOperator,
    *,
    num_runs: int = 4,
    num_iter: int = 64,
    seed: int = 0,
    grid_points: int = 1000,
    sigma: float | None = None,
    shared: LanczosRun | None = None,
    progress: bool = False,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Eigenvalue density by stochastic Lanczos quadrature.

    ``num_runs`` Rademacher start vectors, ``num_iter`` Lanczos steps each. The density on a grid
    spanning the Ritz values (padded by 5%) is ``mean_runs sum_j w_j N(t; theta_j, sigma^2)``, with
    ``sigma`` defaulting to 1% of the spectral range. Returns (summary, arrays: grid, density, nodes,
    weights); ``trace_slq`` = d * mean_runs sum_j w_j theta_j. ``shared``: a Lanczos run on ``op`` from a
    Rademacher (or uniformly random) start that serves as the first run, truncated to ``num_iter`` steps.
    """
    if num_runs < 1 or num_iter < 1:
        raise UserError(f"SLQ needs --slq-runs and --slq-iter of at least 1, got {num_runs} and {num_iter}")
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    nodes, weights = [], []
    if shared is not None:
        if shared.m < min(num_iter, shared.first_block()) and not shared.exhausted:
            raise ValueError(f"the shared Lanczos run has {shared.m} steps; SLQ needs {num_iter}")
        theta, w = shared.quadrature(num_iter)
        nodes.append(theta)
        weights.append(w)
    for _ in tqdm(range(num_runs - len(nodes)), desc="SLQ", disable=not progress, leave=False, unit="run"):
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
        "shared_runs": 1 if shared is not None else 0,
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
    criterion: Criterion = "estimate",
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
    """Run the standard set (Lanczos top-k, Hutchinson + layers, optional Hutch++/power, SLQ); dict + arrays.

    One Lanczos run from a Rademacher vector serves three estimators: it gives the top-k eigenvalues,
    is the first SLQ run (it runs at least ``slq_iter`` steps when ``slq_runs > 0``) and deflates the
    Hutchinson trace and layer curvatures. Every other SLQ run and Hutchinson sample costs its own HVPs.
    """
    report: dict = {"dim": op.dim, "num_samples": op.num_samples, "num_batches": len(op.batches),
                    "params": len(op.names), "seed": seed}
    arrays: dict[str, np.ndarray] = {}
    steps = [("lanczos", True), ("power", power), ("hutchinson", trace_samples > 0),
             ("hutch++", hutchpp_matvecs > 0), ("density", slq_runs > 0)]
    run: LanczosRun | None = None
    for name, enabled in tqdm(steps, desc="hessian", disable=not progress, unit="step"):
        if not enabled:
            continue
        if on_step:
            on_step(name)
        if name == "lanczos":
            report["top_eigenvalues"], run = run_lanczos(
                op, top_k, max_iter=lanczos_iter, tol=tol, criterion=criterion, seed=seed, start="rademacher",
                min_iter=slq_iter if slq_runs > 0 else 0, progress=progress)
        elif name == "power":
            report["power_iteration"] = power_iteration(op, top_k, tol=tol, seed=seed, progress=progress)
        elif name == "hutchinson":
            hut = hutchinson(op, trace_samples, seed=seed + 1, granularity=granularity, deflate=run,
                             progress=progress)
            arrays["hutchinson_samples"] = np.asarray(hut.pop("samples"))
            report["trace"] = hut
        elif name == "hutch++":
            report["trace_hutchpp"] = hutch_plus_plus(op, hutchpp_matvecs, seed=seed + 2, progress=progress)
        else:
            summary, dens = spectral_density(op, num_runs=slq_runs, num_iter=slq_iter, seed=seed + 3, shared=run,
                                             progress=progress)
            report["density"] = summary
            arrays.update({f"density_{k}": v for k, v in dens.items()})
    report["num_hvp_total"] = op.num_hvp
    return report, arrays
