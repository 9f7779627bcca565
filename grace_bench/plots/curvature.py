"""Per-layer curvature bars (normalised Hutchinson κ_ℓ per layer, grouped by checkpoint)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from grace_bench.errors import UserError
from grace_bench.plots.style import (
    FORMATS,
    figure_style,
    method_styles,
    new_figure,
    save_figure,
    set_title,
    short_layer_names,
)

CURVATURE_LABEL = "curvature κ_ℓ = tr(H_ℓ)/d_ℓ\n(nats per unit weight²)"


def plot_layer_curvature(
    curvature: Mapping[str, Mapping[str, float]],
    *,
    protocol: Any = None,
    title: str = "Per-layer curvature",
    ylabel: str = CURVATURE_LABEL,
    log: bool | None = None,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Grouped bars: one group per layer, one bar per checkpoint; ``curvature[label][layer] = value``.

    Layers keep the order of first appearance. ``log=None`` picks a log axis when all values are
    positive and span more than two decades. A layer missing for a checkpoint leaves a gap.
    """
    if not curvature:
        raise UserError("no per-layer curvature to plot; pass geometry-hessian files with per_layer_curvature")
    layers: list[str] = []
    for per_layer in curvature.values():
        for name in per_layer:
            if name not in layers:
                layers.append(name)
    if not layers:
        raise UserError("per-layer curvature is empty; re-run geometry hessian with per-layer curvature on")
    labels = list(curvature)
    values = np.full((len(labels), len(layers)), np.nan)
    for i, label in enumerate(labels):
        for j, name in enumerate(layers):
            v = curvature[label].get(name)
            if v is not None:
                values[i, j] = float(v)
    finite = values[np.isfinite(values)]
    if log is None:
        log = bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 100)
    styles = method_styles(labels)
    width = 0.8 / len(labels)
    x = np.arange(len(layers))
    with figure_style():
        fig, ax = new_figure(size=(min(16.0, max(6.5, 0.45 * len(layers) * max(1, len(labels) / 2) + 3.0)), 5.2))
        for i, label in enumerate(labels):
            ok = np.isfinite(values[i])
            ax.bar(x[ok] + (i - (len(labels) - 1) / 2) * width, values[i, ok], width=width,
                   color=styles[label]["color"], label=label)
        ax.set_xticks(x, short_layer_names(layers), rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="x", visible=False)
        fig.legend(loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig
