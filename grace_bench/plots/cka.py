"""CKA heatmaps: layer × layer between two checkpoints, and method × method on one representation."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from grace_bench.errors import UserError
from grace_bench.plots.style import FORMATS, figure_style, new_figure, save_figure, set_title, short_layer_names


def fit_colorbar_label(fig: Figure, cbar_ax: Axes, text: str) -> None:
    """Label the colorbar with ``text``, wrapped onto as few lines as keep it within the bar's height."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a renderer to measure with (the figure keeps no canvas of its own)
    width = len(text)
    while True:
        lines = textwrap.wrap(text, width=width, break_on_hyphens=False)
        cbar_ax.set_ylabel("\n".join(lines))
        canvas.draw()
        renderer = canvas.get_renderer()
        label_h = cbar_ax.yaxis.label.get_window_extent(renderer).height
        bar_h = cbar_ax.get_window_extent(renderer).height
        if label_h <= bar_h or width <= 12:
            return
        # the rotated label's height is its longest line: shrink the lines in proportion, at least by 3 characters
        width = max(12, min(width - 3, int(max(map(len, lines)) * bar_h / label_h)))


def plot_cka_matrix(
    matrix: Any,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    protocol: Any = None,
    measure: str = "CKA",
    annotate: bool | None = None,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """A CKA heatmap on a fixed [0, 1] colour scale; NaN cells (not measured) are left blank.

    ``annotate=None`` writes the values in the cells when the matrix is at most 12 × 12.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)):
        raise UserError(
            f"CKA matrix has shape {m.shape} but {len(row_labels)} row and {len(col_labels)} column labels"
        )
    if annotate is None:
        annotate = max(m.shape) <= 12
    size = (max(5.0, 0.55 * m.shape[1] + 3.2), max(4.0, 0.45 * m.shape[0] + 2.2))
    with figure_style():
        fig, ax = new_figure(size=size)
        sns.heatmap(
            m,
            ax=ax,
            vmin=0.0,
            vmax=1.0,
            cmap="viridis",
            annot=annotate,
            fmt=".2f",
            annot_kws={"fontsize": 7},
            square=m.shape[0] == m.shape[1],
            xticklabels=list(col_labels),
            yticklabels=list(row_labels),
            cbar_kws={"shrink": 0.85},
            mask=~np.isfinite(m),
        )
        ax.grid(False)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=60, labelsize=8)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
        set_title(fig, title, protocol)
        fit_colorbar_label(fig, ax.collections[0].colorbar.ax, f"{measure} (unitless, 0–1)")
        save_figure(fig, out, formats)
    return fig


def plot_cka_layers(
    matrix: Any,
    layers: Sequence[str],
    ref_layers: Sequence[str] | None = None,
    *,
    label: str,
    ref_label: str,
    protocol: Any = None,
    measure: str = "CKA",
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Layer × layer CKA between checkpoint ``label`` (rows) and the reference ``ref_label`` (columns)."""
    ref_layers = layers if ref_layers is None else ref_layers
    return plot_cka_matrix(
        matrix,
        short_layer_names(layers),
        short_layer_names(ref_layers),
        xlabel=f"layer of {ref_label}",
        ylabel=f"layer of {label}",
        title=f"Layer-wise CKA: {label} vs {ref_label}",
        protocol=protocol,
        measure=measure,
        out=out,
        formats=formats,
    )


def plot_cka_methods(
    matrix: Any,
    labels: Sequence[str],
    *,
    representation: str = "final image embedding",
    protocol: Any = None,
    measure: str = "CKA",
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Method × method CKA of one representation (symmetric; NaN where a pair was not measured)."""
    return plot_cka_matrix(
        matrix,
        labels,
        labels,
        xlabel="checkpoint",
        ylabel="checkpoint",
        title=f"CKA between checkpoints ({representation})",
        protocol=protocol,
        measure=measure,
        out=out,
        formats=formats,
    )
