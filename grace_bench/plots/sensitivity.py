"""Knob sensitivity from the tuning trials: validation HM, robust and clean accuracy against each tuned knob.

Every trial of one row is a point in each panel (one panel per knob, the learning rate included), so a panel
shows how much the row's result moves with that knob while the others vary too (a random search, not a
one-at-a-time sweep: read a trend only where it stands out of the spread). The selected trial is ringed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from grace_bench.errors import UserError
from grace_bench.plots.style import FORMATS, figure_style, new_figure, palette, percent_formatter, save_figure

SERIES = (("val_hm", "HM(clean, robust)", "o"), ("val_robust", "robust (PGD-10)", "^"),
          ("val_clean", "clean (ID)", "s"))
KNOB_TITLES = {"lr": "learning rate", "lambda_gv": "λ_GV", "lambda_lar": "λ_LAR", "awp_rho": "ρ (AWP radius)",
               "alpha": "α", "beta": "β", "label_mask": "label mask"}


def knob_value(trial: Mapping[str, Any], knob: str) -> Any:
    return trial["lr"] if knob == "lr" else (trial.get("method_args") or {}).get(knob)


def plot_sensitivity(
    trials: Sequence[Mapping[str, Any]],
    knobs: Sequence[str],
    *,
    label: str,
    log_knobs: Sequence[str] = (),
    selected: int | None = None,
    title: str | None = None,
    subtitle: str = "",
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """One panel per knob in ``knobs``: each trial's val HM, robust and clean top-1 (fractions) against the knob's
    value (log axis for ``log_knobs``; booleans as two positions). ``selected``: index of the chosen trial."""
    if not trials:
        raise UserError(f"no tuning trials of {label} to plot; run `grace-bench compare --tune` first")
    if not knobs:
        raise UserError(f"{label} tuned no knob; nothing to plot")
    colours = palette(10)
    with figure_style():
        ncols = len(knobs) if len(knobs) < 4 else 2
        nrows = -(-len(knobs) // ncols)
        fig, axes = new_figure(nrows, ncols, size=(4.4 * ncols + 0.6, 3.6 * nrows + 0.9))
        axes = np.atleast_1d(axes).ravel()
        for ax in axes[len(knobs):]:
            ax.set_visible(False)
        for ax, knob in zip(axes, knobs):
            raw = [knob_value(t, knob) for t in trials]
            if any(v is None for v in raw):
                raise UserError(f"a {label} trial has no value of '{knob}'; the tuning file is incomplete, rerun "
                                "`grace-bench compare --tune`")
            is_bool = all(isinstance(v, bool) for v in raw)
            x = np.array([float(v) for v in raw])
            for (key, name, marker), colour in zip(SERIES, (colours[3], colours[4], colours[0])):
                y = np.array([float(t[key]) for t in trials])
                ax.scatter(x, y, marker=marker, s=36, color=colour, label=name, alpha=0.85, zorder=3)
                if selected is not None:
                    i = [int(t["index"]) for t in trials].index(selected)
                    ax.scatter([x[i]], [y[i]], s=150, facecolors="none", edgecolors="black", lw=1.2, zorder=4)
            if is_bool:
                ax.set_xticks([0, 1], ["off", "on"])
                ax.set_xlim(-0.5, 1.5)
            elif knob in log_knobs:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(KNOB_TITLES.get(knob, knob))
            ax.yaxis.set_major_formatter(percent_formatter())
            ax.set_ylim(0, 1.02)
        for ax in axes[::ncols]:
            ax.set_ylabel("validation top-1 (%)")
        axes[0].legend(loc="lower left", fontsize="small")
        head = title or f"{label}: sensitivity to its knobs ({len(trials)} tuning trials, ○ = selected)"
        fig.suptitle(f"{head}\n{subtitle}" if subtitle else head)
        save_figure(fig, out, formats)
    return fig
