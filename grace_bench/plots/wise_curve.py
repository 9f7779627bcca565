"""WiSE-FT interpolation curve: θ_α = (1−α)·θ0 + α·θ_ft, ID against OOD, and accuracy against α."""

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
    percent_formatter,
    save_figure,
    set_title,
)


def plot_wise_curve(
    alphas: Sequence[float],
    id_acc: Sequence[float],
    ood_acc: Sequence[float],
    *,
    adv: Sequence[float | None] | None = None,
    label: str = "WiSE-FT",
    references: Mapping[str, Mapping[str, float]] | None = None,
    protocol: Any = None,
    title: str = "WiSE-FT weight interpolation",
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Left: OOD avg vs ID along α (each point labelled with α), with ``references[label] = {"id", "ood"}``
    as single markers. Right: ID, OOD avg (and Adv when given) against α. Accuracies are fractions.
    """
    a = np.asarray(alphas, dtype=float)
    i = np.asarray(id_acc, dtype=float)
    o = np.asarray(ood_acc, dtype=float)
    if a.size < 2:
        raise UserError("a WiSE-FT curve needs at least two α values; evaluate more interpolated checkpoints")
    if not (a.shape == i.shape == o.shape):
        raise UserError("WiSE-FT curve: alphas, ID and OOD accuracies must have the same length")
    order = np.argsort(a)
    a, i, o = a[order], i[order], o[order]
    adv_arr = None
    if adv is not None:
        adv_arr = np.array([np.nan if v is None else float(v) for v in adv])[order]
        if not np.isfinite(adv_arr).any():
            adv_arr = None
    references = dict(references or {})
    styles = method_styles([label, *references])
    colour = styles[label]["color"]
    with figure_style():
        fig, axes = new_figure(1, 2, size=(11.5, 4.6))
        ax_c, ax_a = axes.ravel()
        ax_c.plot(i * 100, o * 100, color=colour, marker="o", ms=4, lw=1.6, label=f"{label} (α = 0 … 1)")
        for k in range(a.size):
            ax_c.annotate(f"{a[k]:g}", (i[k] * 100, o[k] * 100), xytext=(4, 3), textcoords="offset points",
                          fontsize=7, color="0.25")
        for ref, p in references.items():
            if p.get("id") is None or p.get("ood") is None:
                continue
            st = styles[ref]
            ax_c.scatter(float(p["id"]) * 100, float(p["ood"]) * 100, color=st["color"], marker=st["marker"],
                         s=70, edgecolor="black", linewidth=0.5, zorder=3, label=ref)
        ax_c.set_xlabel("ID top-1 accuracy (%)")
        ax_c.set_ylabel("OOD avg top-1 accuracy (%)")
        ax_c.set_title("ID vs OOD (labels: α)")
        ax_c.margins(0.12)
        ax_a.plot(a, i, color=colour, lw=1.6, marker="o", ms=4, ls="-", label="ID")
        ax_a.plot(a, o, color=colour, lw=1.6, marker="s", ms=4, ls="--", label="OOD avg")
        if adv_arr is not None:
            ok = np.isfinite(adv_arr)
            ax_a.plot(a[ok], adv_arr[ok], color=colour, lw=1.6, marker="^", ms=4, ls=":", label="Adv")
        ax_a.set_xlabel("mixing coefficient α (0 = zero-shot θ0, 1 = fine-tuned)")
        ax_a.set_ylabel("top-1 accuracy (%)")
        ax_a.yaxis.set_major_formatter(percent_formatter())
        ax_a.set_xlim(a.min() - 0.03, a.max() + 0.03)
        ax_a.set_title("accuracy vs α")
        ax_a.legend(loc="best", fontsize=8)
        fig.legend(*ax_c.get_legend_handles_labels(), loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig
