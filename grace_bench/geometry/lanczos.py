"""One Lanczos process with full reorthogonalisation, kept whole so that several estimators can share it.

After ``m`` steps from a unit start vector ``v_1`` the run holds the orthonormal Krylov basis
``V = [v_1 .. v_m]``, the tridiagonal ``T = V^T H V`` (``alphas`` on the diagonal, ``betas`` beside it;
a zero beta marks a restart after an invariant subspace) and the residual ``w = beta_m v_{m+1}``, so
that ``H V = V T + w e_m^T`` (up to rounding). The same run gives
- Ritz pairs of ``T`` with residuals ``|beta_m s_{m,i}|`` (top-k eigenvalues),
- the Gauss quadrature of stochastic Lanczos quadrature (weights = squared first components),
- an exact low-rank part ``V T V^T`` (+ the ``w`` coupling) for deflated trace estimates.

Ritz value error (Parlett, The Symmetric Eigenvalue Problem, ch. 11): with residual ``r_i`` a Ritz
value is within ``r_i`` of an eigenvalue, and within ``r_i^2 / gap_i`` when no other eigenvalue is
closer than ``gap_i``. ``criterion="estimate"`` takes ``gap_i`` from the other Ritz values (the usual
a-posteriori estimate; the gap to eigenvalues not yet found is unknown, so it is an estimate, not a
bound); ``criterion="residual"`` uses ``r_i`` alone (a guaranteed bound, typically far from tight).
Both describe the Lanczos iteration in exact arithmetic: float32 HVPs limit any eigenvalue to about
1e-6 relative accuracy however small the estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from grace_bench.errors import UserError

Which = Literal["LA", "LM", "SA"]
Criterion = Literal["estimate", "residual"]
CRITERIA = ("estimate", "residual")


def orthogonalise(w: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Classical Gram-Schmidt applied twice (numerically as good as modified GS, and one matmul each)."""
    if basis is None or basis.shape[0] == 0:
        return w
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


class Basis:
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


def tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> np.ndarray:
    """The symmetric tridiagonal matrix with ``alphas`` on the diagonal and ``betas`` beside it (float64)."""
    m = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if m > 1:
        off = np.asarray(betas[: m - 1], dtype=np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return t


def eigh_tridiagonal(alphas: Sequence[float], betas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors (columns) of ``tridiagonal(alphas, betas)``.

    LAPACK's tridiagonal solver: O(m^2) and free of the threaded dense path, which crawls on a busy machine.
    """
    from scipy.linalg import eigh_tridiagonal as _eigh

    d = np.asarray(alphas, dtype=np.float64)
    if d.shape[0] == 1:
        return d.copy(), np.ones((1, 1))
    return _eigh(d, np.asarray(betas[: d.shape[0] - 1], dtype=np.float64))


def order(theta: np.ndarray, which: Which) -> np.ndarray:
    """Indices of ``theta`` sorted as ``which`` wants (LA largest, SA smallest, LM largest magnitude)."""
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    if which == "LM":
        return np.argsort(-np.abs(theta), kind="stable")
    raise UserError(f"which must be LA (largest), SA (smallest) or LM (largest magnitude), got '{which}'")


def error_estimates(theta: np.ndarray, resid: np.ndarray, idx: np.ndarray, criterion: Criterion) -> np.ndarray:
    """Eigenvalue error of the Ritz values ``theta[idx]`` with residuals ``resid``: ``min(r, r^2 / gap)`` or ``r``."""
    if criterion not in CRITERIA:
        raise UserError(f"criterion must be {' or '.join(CRITERIA)}, got '{criterion}'")
    if criterion == "residual" or theta.shape[0] < 2:
        return resid.copy()
    gaps = np.array([np.min(np.abs(np.delete(theta, i) - theta[i])) for i in idx])
    with np.errstate(divide="ignore"):
        refined = np.where(gaps > 0, resid**2 / np.where(gaps > 0, gaps, 1.0), np.inf)
    return np.minimum(resid, refined)


class LanczosRun:
    """A Lanczos process on ``matvec`` (a symmetric operator on length-``dim`` vectors) from ``v0``.

    ``step()`` costs one matvec. ``restart`` draws a fresh direction orthogonal to the basis after an
    invariant subspace (``beta <= 1e-10 * ||T||``); without it the run simply stops growing.
    """

    def __init__(
        self,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        v0: torch.Tensor,
        *,
        generator: torch.Generator,
        capacity: int = 32,
        restart: bool = True,
    ) -> None:
        norm = float(v0.norm())
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("the Lanczos start vector must be finite and non-zero")
        self.matvec = matvec
        self.dim = v0.shape[0]
        self.gen = generator
        self.restart = restart
        self.basis = Basis(self.dim, v0.device, v0.dtype, capacity)
        self.alphas: list[float] = []
        self.betas: list[float] = []  # couplings v_j <-> v_{j+1}; 0.0 where the run restarted
        self.residual = v0 / norm  # before the first step: the next basis vector itself
        self.beta = 1.0  # norm of ``residual``
        self.restarts = 0
        self.exhausted = False  # invariant subspace reached and no restart wanted (or the space is full)
        self._scale = 0.0

    @property
    def m(self) -> int:
        """Steps (matvecs) taken."""
        return len(self.alphas)

    def step(self) -> None:
        """One Lanczos step: the next basis vector, its matvec, alpha, and the new residual."""
        if self.exhausted:
            raise RuntimeError("the Lanczos run has reached an invariant subspace")
        if self.m > 0:
            if self.beta <= 1e-10 * max(self._scale, 1e-30):
                fresh = torch.randn(self.dim, generator=self.gen, device=self.residual.device,
                                    dtype=self.residual.dtype)
                fresh = orthogonalise(fresh, self.basis.view())
                self.restarts += 1
                self.betas.append(0.0)
                v = fresh / fresh.norm()
            else:
                self.betas.append(self.beta)
                v = self.residual / self.beta
        else:
            v = self.residual
        self.basis.append(v)
        w = self.matvec(v)
        alpha = float(torch.dot(w, v))
        w = w - alpha * v
        if self.m > 0 and self.betas[-1] != 0.0:
            w = w - self.betas[-1] * self.basis[self.m - 1]
        w = orthogonalise(w, self.basis.view())
        self.alphas.append(alpha)
        self.residual = w
        self.beta = float(w.norm())
        self._scale = max(self._scale, abs(alpha), self.beta)
        small = self.beta <= 1e-10 * max(self._scale, 1e-30)
        if self.m >= self.dim or (small and not self.restart):
            self.exhausted = True

    def tridiagonal(self, m: int | None = None) -> np.ndarray:
        """``T`` of the first ``m`` steps (default all): exactly the ``T`` of an ``m``-step run from ``v0``."""
        m = self.m if m is None else min(int(m), self.m)
        return tridiagonal(self.alphas[:m], self.betas[: max(m - 1, 0)])

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values, eigenvectors of ``T`` (columns) and residual norms ``|beta_m s_{m,i}|``."""
        theta, s_mat = eigh_tridiagonal(self.alphas, self.betas)
        return theta, s_mat, np.abs(self.beta * s_mat[-1])

    def first_block(self) -> int:
        """Steps before the first restart (the part of the run that a single Krylov space spans)."""
        return next((j + 1 for j, b in enumerate(self.betas) if b == 0.0), self.m)

    def quadrature(self, num_iter: int) -> tuple[np.ndarray, np.ndarray]:
        """Gauss-quadrature nodes and weights of the first ``num_iter`` steps (stopping at a restart)."""
        m = min(int(num_iter), self.first_block())
        theta, s_mat = eigh_tridiagonal(self.alphas[:m], self.betas[: m - 1])
        return theta, s_mat[0] ** 2

    def vectors(self) -> torch.Tensor:
        """The basis ``V`` as rows, shape (m, dim)."""
        return self.basis.view()

    def low_rank_diagonal(self) -> torch.Tensor:
        """``diag(V T V^T + V e_m w^T + w e_m^T V^T)``: the part of ``diag(H)`` the run has resolved exactly.

        It sums to ``tr(T)``; summed over a block of coordinates it is ``tr(D H D)`` minus the block's share
        of ``P_perp H P_perp`` (``P_perp = I - V V^T``), the part left to sample.
        """
        v = self.vectors()
        t = torch.as_tensor(self.tridiagonal(), device=v.device, dtype=v.dtype)
        out = 2 * v[-1] * self.residual
        step = max(1, (1 << 24) // max(v.shape[0], 1))  # column blocks: no second m x dim temporary
        for start in range(0, self.dim, step):
            block = v[:, start : start + step]
            out[start : start + step] += (block * (t @ block)).sum(0)
        return out
