"""Figures. ``draw(kind, records, out) -> list[Path]`` reads result records into one family of figures
(``plots.api``; ``grace-bench plot`` only parses and calls it). The figure functions below take plain data
(dicts / arrays), return a matplotlib Figure and, given ``out``, write ``out.png`` and ``out.pdf`` atomically.

Names are imported lazily, so importing ``grace_bench.plots.cli`` (done by every ``grace-bench`` start) does not
load matplotlib or seaborn.
"""

from __future__ import annotations

from grace_bench.utils.lazy import lazy_getattr

_EXPORTS = {
    "draw": "api",
    "kinds": "api",
    "register_kind": "api",
    "plot_cka_layers": "cka",
    "plot_cka_matrix": "cka",
    "plot_cka_methods": "cka",
    "plot_layer_curvature": "curvature",
    "plot_spectral_density": "hessian",
    "plot_metric_bars": "metric_bars",
    "plot_landscape_1d": "landscape",
    "plot_landscape_2d": "landscape",
    "plot_landscape_3d": "landscape",
    "figure_style": "style",
    "method_styles": "style",
    "protocol_text": "style",
    "save_figure": "style",
    "plot_radar": "tradeoff",
    "plot_tradeoff": "tradeoff",
    "plot_training_curves": "training",
    "read_log_jsonl": "training",
    "plot_wise_curve": "wise_curve",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("grace_bench.plots", _EXPORTS)
