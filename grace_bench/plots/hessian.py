"""Hessian spectral density (stochastic Lanczos quadrature) on a log scale, overlaid across checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from grace_bench.errors import UserError
from grace_bench.plots.style import FORMATS, figure_style, method_styles, new_figure, save_figure, set_title

EIGEN_LABEL = "Hessian eigenvalue λ (nats per unit weight²)"
DENSITY_LABEL = "spectral density (per unit λ, log scale)"


def plot_spectral_density(
    densities: Mapping[str, Mapping[str, Any]],
    *,
    protocol: Any = None,
    title: str = "Hessian eigenvalue spectral density",
    floor: float = 1e-7,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Overlay ``densities[label] = {"grid", "density", "lambda_max"?}`` with a log density axis.

    Densities below ``floor`` × the largest density are not drawn (a log axis cannot show zeros); a
    dashed line marks each ``lambda_max`` when given.
    """
    if not densities:
        raise UserError("no spectral densities to plot; pass geometry-hessian files that hold a density")
    data = {}
    for label, d in densities.items():
        if "grid" not in d or "density" not in d:
            raise UserError(f"spectral density '{label}' needs 'grid' and 'density' arrays; re-run geometry hessian")
        grid = np.asarray(d["grid"], dtype=float).ravel()
        dens = np.asarray(d["density"], dtype=float).ravel()
        if grid.shape != dens.shape:
            raise UserError(f"spectral density '{label}': grid and density lengths differ ({grid.size} vs {dens.size})")
        data[label] = (grid, dens, d.get("lambda_max"))
    peak = max(float(np.nanmax(dens)) for _, dens, _ in data.values())
    if not peak > 0:
        raise UserError("spectral densities are all zero; re-run geometry hessian with more Lanczos steps")
    lo = peak * floor
    styles = method_styles(data)
    with figure_style():
        fig, ax = new_figure(size=(7.8, 4.4))
        for label, (grid, dens, lam) in data.items():
            st = styles[label]
            ax.plot(grid, np.where(dens >= lo, dens, np.nan), color=st["color"], lw=1.6, label=label)
            if lam is not None:
                ax.axvline(float(lam), color=st["color"], ls="--", lw=1.0, alpha=0.8)
        ax.set_yscale("log")
        ax.set_ylim(lo, peak * 3)
        ax.set_xlabel(EIGEN_LABEL)
        ax.set_ylabel(DENSITY_LABEL)
        handles, labels = ax.get_legend_handles_labels()
        if any(lam is not None for _, _, lam in data.values()):
            from matplotlib.lines import Line2D

            handles.append(Line2D([], [], color="0.3", ls="--", lw=1.0))
            labels.append("λ_max (dashed)")
        fig.legend(handles, labels, loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig
