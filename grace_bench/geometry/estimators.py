"""Curvature estimators that take any ``operators.CurvatureOperator``: Lanczos top-k, power iteration,
Hutchinson (trace, Frobenius norm, per-layer blocks), Hutch++, SLQ density and the Hutchinson diagonal.

Each returns a plain dict recording its seed, its matvec count (``num_hvp``) and how it converged;
the definitions are in ``grace_bench.geometry.hessian``'s docstring. Errors name the parameter.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from grace_bench.errors import UserError
from grace_bench.geometry.diagonal import Diagonal
from grace_bench.geometry.lanczos import (
    Criterion,
    LanczosRun,
    Which,
    error_estimates,
    order,
    orthogonalise,
)
from grace_bench.geometry.layers import group_sizes, group_sums, layer_groups, segment_ids
from grace_bench.geometry.operators import CurvatureOperator, operator_slices

Start = Literal["gradient", "random", "rademacher"]
Groups = dict[str, list[slice]]

__all__ = ["hutch_plus_plus", "hutchinson", "hutchinson_diagonal", "lanczos_eigenvalues", "power_iteration",
           "rademacher", "run_lanczos", "spectral_density"]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def rademacher(n: int, dim: int, *, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """``n`` Rademacher (+-1) vectors of length ``dim`` as rows."""
    r = torch.randint(0, 2, (n, dim), generator=generator, device=device)
    return (r * 2 - 1).to(dtype)


def _start_vector(op: CurvatureOperator, start: Start | torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, str]:
    if isinstance(start, torch.Tensor):
        return start.to(device=op.device, dtype=op.dtype).reshape(-1), "given"
    if start == "rademacher":
        return rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0], "rademacher"
    noise = torch.randn(op.dim, generator=gen, device=op.device, dtype=op.dtype)
    if start == "random":
        return noise, "gaussian"
    if start != "gradient":
        raise UserError(f"start must be gradient, random, rademacher or a vector, got '{start}'")
    if not callable(getattr(op, "gradient", None)):
        raise ValueError("start='gradient' needs an operator with a gradient(); use start='random'")
    g = op.gradient()
    g_norm = float(g.norm())
    if not math.isfinite(g_norm) or g_norm == 0.0:
        return noise, "gaussian (zero gradient)"
    return g / g_norm + noise / noise.norm(), "gradient+gaussian"


def run_lanczos(
    op: CurvatureOperator,
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
        raise UserError(f"k must be at least 1, got {k}")
    order(np.zeros(1), which)  # unknown orders and criteria fail before any HVP
    error_estimates(np.zeros(1), np.zeros(1), np.zeros(1, dtype=int), criterion)
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    m_max = min(max(int(max_iter), int(min_iter)), op.dim)
    if m_max < k:
        raise UserError(f"max_iter ({max_iter}) and the operator size ({op.dim}) must be at least k ({k})")
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
    op: CurvatureOperator,
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
    op: CurvatureOperator,
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


def _groups(op: CurvatureOperator, granularity: str | Groups | None) -> Groups:
    if granularity is None:
        return {}
    if isinstance(granularity, str):
        return layer_groups(operator_slices(op), granularity)
    return {key: list(sls) for key, sls in granularity.items()}


def _mean_se(samples: np.ndarray) -> tuple[float, float]:
    n = samples.shape[0]
    mean = float(samples.mean())
    se = float(samples.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


def hutchinson(
    op: CurvatureOperator,
    num_samples: int = 100,
    *,
    seed: int = 0,
    granularity: str | Groups | None = "block",
    deflate: LanczosRun | None = None,
    progress: bool = False,
) -> dict:
    """Hutchinson trace with std err, ``||H||_F/sqrt(d)`` and per-layer ``kappa_l = tr(H_ll)/d_l``.

    All three come from the same ``num_samples`` Rademacher HVPs. ``granularity``: ``block``, ``module``,
    ``param`` (layers of ``op.slices()``), an explicit ``{layer: [slices]}`` mapping, or None (no layers).
    ``deflate`` (a Lanczos run on ``op``): its Krylov part is taken exactly and only the rest is sampled
    (see the module docstring); std errs are then those of the sampled part. ``samples`` holds the
    per-vector trace estimates (low-rank part included), whose mean is ``trace``.
    """
    if num_samples < 2:
        raise UserError(f"num_samples must be at least 2 for an error bar, got {num_samples}")
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    groups = _groups(op, granularity)
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
    segment = segment_ids(op.dim, groups, op.device) if groups else None
    for i in tqdm(range(num_samples), desc="hutchinson", disable=not progress, leave=False, unit="hvp"):
        v = rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0]
        u = v if basis is None else v - basis.T @ (basis @ v)
        hv = op.matvec(u)
        z = hv if basis is None else hv - basis.T @ (basis @ hv)
        prod = v * z  # sums to u . H u; per block to the block's share of the sampled part
        quad[i] = float(prod.sum())
        sq[i] = float(torch.dot(hv, hv))
        if groups:
            for key, value in zip(groups, group_sums(prod, segment, len(groups)).tolist()):
                per_layer[key][i] = value
    trace, trace_se = _mean_se(quad)
    trace += low_trace
    tr_h2, tr_h2_se = _mean_se(sq)
    fro = math.sqrt(max(tr_h2 + low_fro2, 0.0))
    fro_se = tr_h2_se / (2 * fro) if fro > 0 else float("nan")
    layers = {}
    low_layer = [0.0] * len(groups)
    if groups and low_diag is not None:
        low_layer = group_sums(low_diag, segment, len(groups)).tolist()
    for (key, d_l), low_l in zip(group_sizes(groups).items(), low_layer):
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
        "granularity": granularity if isinstance(granularity, str) or granularity is None else "custom",
        "layers": layers,
        "seed": seed,
        "samples": (quad + low_trace).tolist(),
        "wall_time_s": time.perf_counter() - t0,
    }
    if basis is not None:
        out["deflation"] = {"rank": int(basis.shape[0]), "low_rank_trace": low_trace,
                            "source": "Krylov basis of the top-eigenvalue Lanczos run (no extra HVPs)"}
    return out


def hutch_plus_plus(op: CurvatureOperator, num_matvecs: int = 99, *, seed: int = 0, progress: bool = False) -> dict:
    """Hutch++ trace (Meyer et al. 2021) with ``num_matvecs`` HVPs: ``tr(Q^T H Q)`` + Hutchinson on ``(I-QQ^T)``.

    ``trace_se`` is the std err of the residual Hutchinson part (conditional on the sketch ``Q``).
    """
    if num_matvecs < 6:
        raise UserError(f"num_matvecs of Hutch++ must be at least 6, got {num_matvecs}")
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


def _lanczos_quadrature(op: CurvatureOperator, v0: torch.Tensor, num_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and quadrature weights (squared first eigenvector components) of an ``num_iter``-step run."""
    run = LanczosRun(op.matvec, v0, generator=_generator(op.device, 0), capacity=min(num_iter, op.dim),
                     restart=False)
    while run.m < min(num_iter, op.dim) and not run.exhausted:
        run.step()  # an invariant subspace ends the run early: the quadrature is then exact
    return run.quadrature(num_iter)


def spectral_density(
    op: CurvatureOperator,
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
        raise UserError(f"num_runs and num_iter of SLQ must be at least 1, got {num_runs} and {num_iter}")
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


def hutchinson_diagonal(op: CurvatureOperator, num_samples: int = 100, *, seed: int = 0,
                        progress: bool = False) -> dict:
    """Diagonal of ``op`` by Hutchinson (Bekas et al. 2007): ``mean(v * Hv)`` over Rademacher ``v``.

    Returns ``diagonal`` (a ``Diagonal`` split by ``op.slices()``), ``diagonal_se`` (flat per-entry std
    err) and ``layers`` (per-layer mean diagonal entry, block granularity).
    """
    if num_samples < 2:
        raise UserError(f"num_samples must be at least 2 for an error bar, got {num_samples}")
    t0 = time.perf_counter()
    hvp0 = op.num_hvp
    gen = _generator(op.device, seed)
    total = torch.zeros(op.dim, device=op.device, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for _ in tqdm(range(num_samples), desc="diagonal", disable=not progress, leave=False, unit="hvp"):
        v = rademacher(1, op.dim, generator=gen, device=op.device, dtype=op.dtype)[0]
        prod = (v * op.matvec(v)).double()
        total += prod
        total_sq += prod * prod
    mean = total / num_samples
    var = (total_sq - num_samples * mean * mean).clamp_min(0) / (num_samples - 1)
    slices = operator_slices(op)
    diag = Diagonal.from_flat(mean, slices)
    groups = layer_groups(slices, "block")
    index = {name: i for i, name in enumerate(slices)}
    members = {key: [i for name, i in index.items() if slices[name] in sls] for key, sls in groups.items()}
    means = diag.block_means(list(members.values())).tolist()
    return {
        "method": "hutchinson-diagonal-rademacher",
        "diagonal": diag,
        "diagonal_se": (var / num_samples).sqrt(),
        "layers": dict(zip(members, means)),
        "num_samples": num_samples,
        "num_hvp": op.num_hvp - hvp0,
        "seed": seed,
        "wall_time_s": time.perf_counter() - t0,
    }
