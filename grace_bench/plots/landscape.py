"""Loss-landscape figures: 1D curves, 2D contours and an optional 3D surface (Li et al. 2018 style)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from grace_bench.errors import UserError
from grace_bench.plots.style import (
    FORMATS,
    figure_style,
    method_styles,
    new_figure,
    percent_formatter,
    save_figure,
    set_title,
)

LOSS_LABEL = "cross-entropy loss (nats)"
DIRECTION_LABEL = "step along direction α (filter-normalised units)"


def _curve_arrays(label: str, curve: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        alpha = np.asarray(curve["alpha"], dtype=float).ravel()
        loss = np.asarray(curve["loss"], dtype=float).ravel()
    except KeyError as exc:
        raise UserError(f"landscape curve '{label}' has no {exc.args[0]!r} array; pass 'alpha' and 'loss'") from exc
    acc = curve.get("acc")
    acc = None if acc is None else np.asarray(acc, dtype=float).ravel()
    if alpha.shape != loss.shape or (acc is not None and acc.shape != alpha.shape):
        raise UserError(f"landscape curve '{label}': alpha, loss (and acc) lengths differ; re-run the geometry command")
    return alpha, loss, acc


def plot_landscape_1d(
    curves: Mapping[str, Mapping[str, Any]],
    *,
    protocol: Any = None,
    title: str = "Loss landscape (1D)",
    xlabel: str = DIRECTION_LABEL,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Loss (and accuracy, when given) along one direction; ``curves[label] = {"alpha", "loss", "acc"?}``."""
    if not curves:
        raise UserError("no landscape curves to plot; pass geometry-landscape files with 1D grids")
    data = {label: _curve_arrays(label, c) for label, c in curves.items()}
    has_acc = any(acc is not None for _, _, acc in data.values())
    styles = method_styles(data)
    with figure_style():
        fig, axes = new_figure(1, 2 if has_acc else 1, size=(10.5 if has_acc else 6.4, 4.0))
        axes = np.atleast_1d(axes).ravel()
        for label, (alpha, loss, acc) in data.items():
            st = styles[label]
            axes[0].plot(alpha, loss, color=st["color"], label=label, lw=1.8)
            if acc is not None:
                axes[1].plot(alpha, acc, color=st["color"], lw=1.8)
        axes[0].set_ylabel(LOSS_LABEL)
        if has_acc:
            axes[1].set_ylabel("top-1 accuracy (%)")
            axes[1].yaxis.set_major_formatter(percent_formatter())
        for ax in axes:
            ax.set_xlabel(xlabel)
            ax.axvline(0.0, color="0.4", ls=":", lw=1)
        fig.legend(loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig


def _surface(label: str, s: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        x = np.asarray(s["x"], dtype=float).ravel()
        y = np.asarray(s["y"], dtype=float).ravel()
        z = np.asarray(s["loss"], dtype=float)
    except KeyError as exc:
        raise UserError(f"landscape surface '{label}' has no {exc.args[0]!r} array; pass 'x', 'y' and 'loss'") from exc
    if z.shape != (x.size, y.size):
        raise UserError(
            f"landscape surface '{label}': loss has shape {z.shape}, expected (len(x), len(y)) = {(x.size, y.size)}"
        )
    return x, y, z


def _levels(zs: Sequence[np.ndarray], n: int, vmax: float | None) -> np.ndarray:
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in zs])
    if finite.size == 0:
        raise UserError("landscape surfaces hold no finite loss values; re-run the geometry command")
    lo = float(finite.min())
    hi = float(vmax) if vmax is not None else float(finite.max())
    if hi <= lo:
        hi = lo + 1e-6
    return np.linspace(lo, hi, n)


def plot_landscape_2d(
    surfaces: Mapping[str, Mapping[str, Any]],
    *,
    protocol: Any = None,
    title: str = "Loss landscape (2D contours)",
    levels: int = 20,
    vmax: float | None = None,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Filled contours of the loss on a 2D grid, one panel per checkpoint, shared levels.

    ``surfaces[label] = {"x": (nx,), "y": (ny,), "loss": (nx, ny)}`` with ``loss[i, j]`` at ``(x[i], y[j])``.
    Losses above ``vmax`` are drawn in the top colour.
    """
    if not surfaces:
        raise UserError("no landscape surfaces to plot; pass geometry-landscape files with 2D grids")
    data = {label: _surface(label, s) for label, s in surfaces.items()}
    lv = _levels([z for _, _, z in data.values()], levels, vmax)
    n = len(data)
    with figure_style():
        fig, axes = new_figure(1, n, size=(4.2 * n + 1.2, 4.2))
        axes = np.atleast_1d(axes).ravel()
        filled = None
        for ax, (label, (x, y, z)) in zip(axes, data.items()):
            zz = np.clip(z, None, lv[-1]).T  # contour wants (ny, nx)
            filled = ax.contourf(x, y, zz, levels=lv, cmap="viridis", extend="neither")
            lines = ax.contour(x, y, zz, levels=lv[::2], colors="white", linewidths=0.6, alpha=0.8)
            ax.clabel(lines, lines.levels[::2], fontsize=7, fmt="%.3g")
            ax.plot([0], [0], marker="*", color="white", markeredgecolor="black", ms=11, ls="none")
            ax.set_title(label)
            ax.set_xlabel("direction 1 (filter-normalised units)")
            ax.set_ylabel("direction 2 (filter-normalised units)")
            ax.set_aspect("equal", adjustable="box")
        cbar = fig.colorbar(filled, ax=list(axes), shrink=0.9)
        cbar.set_ticks([t for t in MaxNLocator(7).tick_values(lv[0], lv[-1]) if lv[0] <= t <= lv[-1]])
        cbar.set_label(LOSS_LABEL)
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig


def plot_landscape_3d(
    x: Any,
    y: Any,
    loss: Any,
    *,
    label: str,
    protocol: Any = None,
    title: str = "Loss landscape (3D surface)",
    vmax: float | None = None,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """A 3D surface of the loss on a 2D grid (``loss[i, j]`` at ``(x[i], y[j])``) for one checkpoint."""
    x, y, z = _surface(label, {"x": x, "y": y, "loss": loss})
    top = _levels([z], 2, vmax)[-1]
    with figure_style():
        fig = Figure(figsize=(6.4, 5.4), layout="constrained")
        ax = fig.add_subplot(projection="3d")
        xx, yy = np.meshgrid(x, y)
        ax.plot_surface(xx, yy, np.clip(z, None, top).T, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_zlabel(LOSS_LABEL)
        ax.set_title(f"{label} (directions in filter-normalised units)", fontsize=9)
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig
