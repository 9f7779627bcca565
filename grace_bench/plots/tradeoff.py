"""The ID / OOD / Adv trade-off: a scatter with exact HM iso-lines, and an optional radar chart.

HM = 3 / (1/ID + 1/OOD + 1/Adv). With N = 2 / (1/ID + 1/OOD), the harmonic mean of the two clean
axes, HM = 3 / (2/N + 1/Adv), so points of equal HM lie on the exact curve Adv = 1 / (3/HM − 2/N) in
the (N, Adv) plane. The right panel uses that plane; the left one shows ID against OOD.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from grace_bench.errors import UserError
from grace_bench.plots.style import FORMATS, figure_style, method_styles, new_figure, save_figure, set_title
from grace_bench.results.values import harmonic_mean


def hm_isoline(hm: float, n_grid: np.ndarray) -> np.ndarray:
    """Adv on the iso-line HM(ID, OOD, Adv) = ``hm`` at clean harmonic mean ``n_grid`` (NaN where none)."""
    denom = 3.0 / hm - 2.0 / n_grid
    with np.errstate(divide="ignore", invalid="ignore"):
        adv = np.where(denom > 0, 1.0 / denom, np.nan)
    return np.where(adv <= 1.0, adv, np.nan)


def _points(points: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, float, float]]:
    out = {}
    for label, p in points.items():
        vals = [p.get(k) for k in ("id", "ood", "adv")]
        if any(v is None for v in vals):
            missing = [k for k, v in zip(("id", "ood", "adv"), vals) if v is None]
            raise UserError(f"trade-off point '{label}' lacks {', '.join(missing)}; evaluate it with an attack")
        out[label] = tuple(float(v) for v in vals)
    return out


def plot_tradeoff(
    points: Mapping[str, Mapping[str, Any]],
    *,
    protocol: Any = None,
    title: str = "ID / OOD / adversarial trade-off",
    n_isolines: int = 5,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Two panels from ``points[label] = {"id", "ood", "adv"}`` (fractions in [0, 1]).

    Left: ID vs OOD avg with the y = x line. Right: HM(ID, OOD) vs Adv with exact HM iso-lines.
    """
    if not points:
        raise UserError("no results to plot; pass summary files that hold ID, OOD and Adv aggregates")
    data = _points(points)
    styles = method_styles(data)
    ids = np.array([v[0] for v in data.values()])
    oods = np.array([v[1] for v in data.values()])
    advs = np.array([v[2] for v in data.values()])
    ns = np.array([harmonic_mean([i, o]) for i, o in zip(ids, oods)])
    hms = np.array([harmonic_mean([i, o, a]) for i, o, a in zip(ids, oods, advs)])
    with figure_style():
        fig, axes = new_figure(1, 2, size=(11.5, 4.9))
        ax_c, ax_h = axes.ravel()
        for (label, (i_acc, o_acc, _adv)), n, adv in zip(data.items(), ns, advs):
            st = styles[label]
            kw = {"color": st["color"], "marker": st["marker"], "s": 90 if st["marker"] == "*" else 55,
                  "edgecolor": "black", "linewidth": 0.5, "zorder": 3}
            ax_c.scatter(i_acc * 100, o_acc * 100, label=label, **kw)
            ax_h.scatter(n * 100, adv * 100, **kw)
        # Left: ID vs OOD, with the y = x line.
        lo = min(ids.min(), oods.min()) * 100
        hi = max(ids.max(), oods.max()) * 100
        pad = max(2.0, 0.08 * (hi - lo))
        lim = (max(0.0, lo - pad), min(100.0, hi + pad))
        ax_c.plot(lim, lim, color="0.5", ls=":", lw=1, label="OOD = ID")
        ax_c.set_xlim(lim)
        ax_c.set_ylim(lim)
        ax_c.set_xlabel("ID top-1 accuracy (%)")
        ax_c.set_ylabel("OOD avg top-1 accuracy (%)")
        ax_c.set_title("clean: ID vs OOD")
        # Right: HM(ID, OOD) vs Adv with iso-HM curves.
        pad_x = max(2.0, 0.1 * (ns.max() - ns.min()) * 100)
        pad_y = max(2.0, 0.1 * (advs.max() - advs.min()) * 100)
        xlim = (max(0.5, ns.min() * 100 - pad_x), min(100.0, ns.max() * 100 + pad_x))
        ylim = (max(0.0, advs.min() * 100 - pad_y), min(100.0, advs.max() * 100 + pad_y))
        grid = np.linspace(xlim[0], xlim[1], 400) / 100
        hm_lo, hm_hi = max(hms.min() * 0.75, 1e-3), min(hms.max() * 1.2, 0.999)
        levels = [v for v in MaxNLocator(n_isolines).tick_values(hm_lo * 100, hm_hi * 100) if 0 < v < 100]
        for level in levels:
            curve = hm_isoline(level / 100, grid) * 100
            ok = np.isfinite(curve) & (curve >= ylim[0]) & (curve <= ylim[1])
            if ok.sum() < 2:
                continue
            ax_h.plot(grid[ok] * 100, curve[ok], color="0.55", lw=0.9, ls="--", zorder=1)
            idx = np.flatnonzero(ok)
            k = idx[int(0.15 * (len(idx) - 1))]
            ax_h.text(grid[k] * 100, curve[k], f"HM {level:g}%", fontsize=7, color="0.3", ha="center",
                      va="center", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        for n, adv, hm in zip(ns, advs, hms):
            ax_h.annotate(f"{100 * hm:.1f}", (n * 100, adv * 100), xytext=(6, -3), textcoords="offset points",
                          fontsize=7, color="0.2", va="top")
        ax_h.set_xlim(xlim)
        ax_h.set_ylim(ylim)
        ax_h.set_xlabel("harmonic mean of ID and OOD avg (%)")
        ax_h.set_ylabel("Adv robust accuracy (%)")
        ax_h.set_title("dashed: iso-lines of HM(ID, OOD, Adv); labels: HM (%)")
        fig.legend(*ax_c.get_legend_handles_labels(), loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig


RADAR_AXES = (("id", "ID"), ("ood_avg", "OOD avg"), ("nat_adv", "Nat-adv"), ("autoattack", "Robust"),
              ("adv", "Adv"), ("hm", "HM"))


def plot_radar(
    points: Mapping[str, Mapping[str, Any]],
    *,
    axes: Sequence[tuple[str, str]] = RADAR_AXES,
    protocol: Any = None,
    title: str = "Accuracy profile (%)",
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Radar chart of aggregates ``points[label][key]`` (fractions) over ``axes`` = ((key, name), ...).

    Axes that no checkpoint has are dropped; a checkpoint missing one axis is drawn at 0 there.
    """
    if not points:
        raise UserError("no results to plot; pass summary files with aggregates")
    axes = [(k, name) for k, name in axes if any(p.get(k) is not None for p in points.values())]
    if len(axes) < 3:
        raise UserError("a radar chart needs at least 3 aggregates present; use the trade-off scatter instead")
    styles = method_styles(points)
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False)
    with figure_style():
        fig = Figure(figsize=(7.4, 5.6), layout="constrained")
        ax = fig.add_subplot(projection="polar")
        for label, p in points.items():
            vals = np.array([float(p.get(k) or 0.0) for k, _ in axes]) * 100
            st = styles[label]
            ax.plot(np.r_[angles, angles[:1]], np.r_[vals, vals[:1]], color=st["color"], lw=1.6,
                    marker=st["marker"], ms=4, label=label)
            ax.fill(np.r_[angles, angles[:1]], np.r_[vals, vals[:1]], color=st["color"], alpha=0.06)
        ax.set_xticks(angles, [name for _, name in axes])
        ax.set_ylim(0, 100)
        ax.set_rlabel_position(90)
        ax.tick_params(axis="y", labelsize=7)
        fig.legend(loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig
