"""``grace-bench plot KIND RESULTS... [--out DIR]``: parse the command line and call ``grace_bench.plots.draw``.

KIND       reads                                           writes (under --out)
landscape  geometry-landscape-*.json (+ .npz)              landscape-1d, landscape-interp, landscape-2d, landscape-3d-*
spectrum   geometry-hessian-*.json (+ .npz density)         spectrum
curvature  geometry-hessian-*.json (per_layer_curvature)   curvature
cka        geometry-features-*.json (+ .npz cka_layers)    cka-layers-<label>, cka-methods
tradeoff   summary-*.json                                  tradeoff (+ tradeoff-radar with --radar)
wise       summary-*.json (those with a WiSE-FT alpha)     wise
training   runs/NAME/log.jsonl (or run directories)        training
metrics    geometry-*.json (any kind)                      metric-<key> for every geometry metric of the table
"""

from __future__ import annotations

import argparse

from grace_bench.plots.api import draw, kinds


def add_plot_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``plot`` on the top-level CLI's subparsers."""
    p = subparsers.add_parser(
        "plot",
        help="draw figures (PNG + PDF) from result files",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=kinds(), help="figure family")
    p.add_argument("results", nargs="+", help="result files or directories (searched recursively)")
    p.add_argument("--out", default="figures", help="output directory (default: figures)")
    p.add_argument("--format", dest="formats", action="append", choices=("png", "pdf", "svg"),
                   help="file format; repeat for several (default: png and pdf)")
    p.add_argument("--surface", action="store_true", help="landscape: also draw 3D surfaces of 2D grids")
    p.add_argument("--radar", action="store_true", help="tradeoff: also draw a radar chart of the aggregates")
    p.add_argument("--vmax", type=float, default=None, help="landscape: cap the loss colour scale at this value")
    p.set_defaults(func=run_plot)
    return p


def run_plot(args: argparse.Namespace) -> int:
    """Draw the figures of ``args.kind`` from ``args.results`` into ``args.out``; prints the written files."""
    written = draw(args.kind, args.results, args.out, formats=args.formats, surface=args.surface, radar=args.radar,
                   vmax=args.vmax)
    for path in written:
        print(path)
    return 0
