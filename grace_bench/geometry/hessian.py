"""Hessian diagnostics by Hessian-vector products: top eigenvalues, trace, spectral density, layer curvature.

The code lives in four modules; this one keeps the definitions and the names callers import:
``operators`` (the HVP operator and other operators), ``estimators`` (Lanczos, Hutchinson, Hutch++,
SLQ, diagonal; any operator), ``layers`` (layer grouping) and ``reports`` (``hessian_report``).

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

from grace_bench.geometry.estimators import (
    Start,
    _lanczos_quadrature,
    hutch_plus_plus,
    hutchinson,
    hutchinson_diagonal,
    lanczos_eigenvalues,
    power_iteration,
    rademacher,
    run_lanczos,
    spectral_density,
)
from grace_bench.geometry.layers import layer_groups, layer_key
from grace_bench.geometry.operators import (
    BlockOperator,
    CurvatureOperator,
    DataParallelOperator,
    HessianOperator,
    MatrixOperator,
    build_operator,
    layer_blocks,
)
from grace_bench.geometry.reports import hessian_fields, hessian_report

__all__ = [
    "BlockOperator", "CurvatureOperator", "DataParallelOperator", "HessianOperator", "MatrixOperator", "Start",
    "_lanczos_quadrature", "build_operator", "hessian_fields", "hessian_report", "hutch_plus_plus", "hutchinson",
    "hutchinson_diagonal", "lanczos_eigenvalues", "layer_blocks", "layer_groups", "layer_key", "power_iteration",
    "rademacher", "run_lanczos", "spectral_density",
]
