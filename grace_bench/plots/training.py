"""Training curves from a run's ``log.jsonl``: loss, learning rate and throughput against the step."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
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

# log.jsonl keys read here (first present wins).
STEP_KEYS = ("step",)
LOSS_KEYS = ("loss",)
LR_KEYS = ("lr",)
THROUGHPUT_KEYS = ("images_per_s", "images/s", "img_per_s")
VAL_KEYS = ("val_acc",)
SERIES = (("loss", LOSS_KEYS), ("lr", LR_KEYS), ("images_per_s", THROUGHPUT_KEYS), ("val_acc", VAL_KEYS))


def read_log_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON records of a ``log.jsonl``; a torn last line (a killed run) is skipped, other bad lines fail."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read training log {path}: {exc}; pass runs/NAME/log.jsonl") from exc
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):
                break
            raise UserError(f"{path}:{n} is not JSON ({exc.msg}); the log is corrupt, trim that line") from exc
        if isinstance(rec, dict):
            records.append(rec)
    return records


def _first(rec: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    for k in keys:
        v = rec.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            return float(v)
    return None


def training_series(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"loss"|"lr"|"images_per_s"|"val_acc": (steps, values)}`` from log records that carry a step."""
    series: dict[str, tuple[list, list]] = {name: ([], []) for name, _ in SERIES}
    for rec in records:
        step = _first(rec, STEP_KEYS)
        if step is None:
            continue
        for name, keys in SERIES:
            v = _first(rec, keys)
            if v is not None:
                series[name][0].append(step)
                series[name][1].append(v)
    return {k: (np.asarray(s), np.asarray(v)) for k, (s, v) in series.items() if s}


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
    one line per run."""
    parsed = {label: training_series(recs) for label, recs in runs.items()}
    parsed = {k: v for k, v in parsed.items() if "loss" in v}
    if not parsed:
        raise UserError("no training records with 'step' and 'loss'; pass runs/NAME/log.jsonl of grace-bench finetune")
    styles = method_styles(parsed)
    panels = [("loss", "training loss (nats)"), ("lr", "learning rate"), ("images_per_s", "throughput (images/s)")]
    if any("val_acc" in s for s in parsed.values()):
        panels.append(("val_acc", "validation top-1 accuracy (%)"))
    with figure_style():
        fig, axes = new_figure(1, len(panels), size=(4.4 * len(panels) + 0.8, 4.0))
        axes = axes.ravel()
        for label, series in parsed.items():
            for ax, (key, _) in zip(axes, panels):
                if key in series:
                    steps, vals = series[key]
                    ax.plot(steps, vals, color=styles[label]["color"], lw=1.3, marker="o" if key == "val_acc" else None,
                            ms=3, label=label if key == "loss" else None)
        for ax, (_key, ylabel) in zip(axes, panels):
            ax.set_xlabel("optimiser step")
            ax.set_ylabel(ylabel)
            if not ax.lines:
                ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="0.5")
        if log_loss and all((s["loss"][1] > 0).all() for s in parsed.values()):
            axes[0].set_yscale("log")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(panels) == 4:
            axes[3].yaxis.set_major_formatter(percent_formatter())
        fig.legend(loc="outside right center")
        set_title(fig, title, protocol)
        save_figure(fig, out, formats)
    return fig
