"""Training curves from a run's ``log.jsonl``: loss, learning rate and throughput against the step."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
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

# log.jsonl keys read here (first present wins).
STEP_KEYS = ("step",)
LOSS_KEYS = ("loss",)
LR_KEYS = ("lr",)
THROUGHPUT_KEYS = ("images_per_s", "images/s", "img_per_s")
VAL_KEYS = ("val_acc",)
# series with at most this many points are drawn with markers
MARKER_MAX_POINTS = 40
SERIES = (("loss", LOSS_KEYS), ("lr", LR_KEYS), ("images_per_s", THROUGHPUT_KEYS), ("val_acc", VAL_KEYS))


class TornLogLineWarning(UserWarning):
    """The last line of a ``log.jsonl`` was cut off (a run killed mid-write) and is skipped."""


def read_log_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON records of a ``log.jsonl``; a torn last line (a killed run) is skipped with a warning.

    Any other line that is not a UTF-8 JSON object raises a one-line ``UserError`` naming the file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read training log {path}: {exc.strerror or exc}; pass runs/NAME/log.jsonl") from exc
    lines = data.split(b"\n")
    last = len(lines) if lines[-1] else len(lines) - 1  # the 1-based number of the final line
    records = []
    for n, raw in enumerate(lines[:last], 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            why = None if isinstance(rec, dict) else f"a JSON {type(rec).__name__}, not an object"
        except UnicodeDecodeError:
            why = "not UTF-8 text"
        except json.JSONDecodeError as exc:
            why = f"not JSON: {exc.msg}"
        if why is None:
            records.append(rec)
        elif n == last and not data.endswith(b"\n") and raw.lstrip().startswith(b"{"):
            warnings.warn(f"{path}:{n} is cut off (a run killed mid-write?); skipped it", TornLogLineWarning,
                          stacklevel=2)
        else:
            raise UserError(f"{path}:{n} is {why}; the log is corrupt: delete that line (or the file) and re-plot")
    return records


def _first(rec: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    for k in keys:
        v = rec.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            return float(v)
    return None


def training_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"loss"|"lr"|"images_per_s"|"val_acc": (steps, values)}`` from log records that carry a step.

    Steps are sorted; a step logged twice (the final validation is also in the ``done`` record) keeps its
    last value.
    """
    series: dict[str, dict[float, float]] = {name: {} for name, _ in SERIES}
    for rec in records:
        step = _first(rec, STEP_KEYS)
        if step is None:
            continue
        for name, keys in SERIES:
            v = _first(rec, keys)
            if v is not None:
                series[name][step] = v
    return {k: (np.asarray(sorted(pts)), np.asarray([pts[s] for s in sorted(pts)])) for k, pts in series.items()
            if pts}


def plot_training_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    protocol: Any = None,
    title: str = "Training curves",
    log_loss: bool = True,
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = FORMATS,
) -> Figure:
    """Training loss, learning rate, images/s (and validation top-1 when logged) against the optimiser step,
    one line per run. Every logged point is drawn: short series (a short run, or a sparse ``--log-every``)
    get markers, so a run with a single logged step still shows it."""
    parsed = {label: training_series(recs) for label, recs in runs.items()}
    parsed = {k: v for k, v in parsed.items() if "loss" in v}
    if not parsed:
        raise UserError("no training records with 'step' and 'loss'; pass runs/NAME/log.jsonl of grace-bench finetune")
    styles = method_styles(parsed)
    panels = [("loss", "training loss (nats)"), ("lr", "learning rate"), ("images_per_s", "throughput (images/s)")]
    if any("val_acc" in s for s in parsed.values()):
        panels.append(("val_acc", "validation top-1 accuracy (%)"))
    with figure_style():
        fig, axes = new_figure(1, len(panels), size=(4.4 * len(panels) + 0.8, 4.0), sharex=True)
        axes = axes.ravel()
        for label, series in parsed.items():
            for ax, (key, _) in zip(axes, panels):
                if key in series:
                    steps, vals = series[key]
                    marked = key == "val_acc" or len(steps) <= MARKER_MAX_POINTS
                    ax.plot(steps, vals, color=styles[label]["color"], lw=1.3, marker="o" if marked else None,
                            ms=4 if len(steps) == 1 else 3, label=label if key == "loss" else None)
        for ax, (_key, ylabel) in zip(axes, panels):
            ax.set_xlabel("optimiser step")
            ax.set_ylabel(ylabel)
            if not ax.lines:
                ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="0.5")
        last = max(float(steps.max()) for series in parsed.values() for steps, _ in series.values())
        axes[0].set_xlim(0, last * 1.04 + 0.5)  # shared by every panel; room for the markers at the last step
        axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        losses = np.concatenate([s["loss"][1] for s in parsed.values()])
        if log_loss and losses.min() > 0 and losses.max() / losses.min() >= 10:  # a log axis when it spans a decade
            axes[0].set_yscale("log")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(panels) == 4:
            axes[3].yaxis.set_major_formatter(percent_formatter())
        fig.legend(loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig
