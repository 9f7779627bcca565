"""One geometry metric across checkpoints: a horizontal bar per checkpoint (± its standard error when known).

The generic figure of any metric in the metrics table, so a new diagnostic has a figure without a plotting module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from grace_bench.errors import UserError
from grace_bench.plots.style import FORMATS, figure_style, method_styles, new_figure, save_figure, set_title

_BETTER = {"higher": "higher is better", "lower": "lower is better", "none": ""}


def plot_metric_bars(
    values: Mapping[str, float],
    *,
    metric_title: str,
    errors: Mapping[str, float | None] | None = None,
    direction: str = "none",
    protocol: Any = None,
    title: str | None = None,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Bars of ``values[label]`` (in the given order), with ``errors[label]`` as error bars where given."""
    if not values:
        raise UserError(f"no values of {metric_title} to plot; pass geometry results that hold it")
    labels = list(values)
    y = np.arange(len(labels))
    vals = np.array([float(values[k]) for k in labels])
    errs = np.array([float((errors or {}).get(k) or 0.0) for k in labels])
    styles = method_styles(labels)
    with figure_style():
        fig, ax = new_figure(size=(6.5, 1.2 + 0.45 * len(labels)))
        ax.barh(y, vals, xerr=errs if errs.any() else None, color=[styles[k]["color"] for k in labels])
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        note = _BETTER.get(direction, "")
        ax.set_xlabel(metric_title + (f" ({note})" if note else ""))
        ax.grid(axis="y", visible=False)
        set_title(fig, title or metric_title, protocol)
        save_figure(fig, out, formats)
    return fig
