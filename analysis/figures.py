"""Rebuild every figure family that the result files allow, through ``grace_bench.plots.draw``:
landscape, spectrum, curvature, cka, tradeoff, wise, training and metrics. A kind without inputs is skipped with
a note.

    python analysis/figures.py RESULTS_DIR... --out DIR [--format png] [--only KIND]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grace_bench.errors import UserError  # noqa: E402
from grace_bench.plots.api import draw, summary_alpha  # noqa: E402
from grace_bench.plots.api import kinds as plot_kinds  # noqa: E402
from grace_bench.results.records import find_files, load_geometry, load_summaries  # noqa: E402

KINDS = plot_kinds()

# figure kind -> the geometry kind it reads (the others read summaries or training logs)
GEOMETRY_INPUT = {"landscape": "landscape", "spectrum": "hessian", "curvature": "hessian", "cka": "features"}


def missing_inputs(kind: str, results: Sequence[str]) -> str | None:
    """Why ``kind`` has nothing to draw from ``results`` (a one-line note), or None when it has inputs."""
    if kind == "metrics":
        return None if load_geometry(results) else "no geometry-*.json (run grace-bench geometry KIND CKPT)"
    if kind in GEOMETRY_INPUT:
        geo = GEOMETRY_INPUT[kind]
        if not load_geometry(results, geo):
            return f"no geometry-{geo}-*.json (run grace-bench geometry {geo} CKPT)"
        return None
    if kind == "training":
        if not [p for p in find_files(results, "log.jsonl") if p.suffix == ".jsonl"]:
            return "no runs/NAME/log.jsonl (pass the run directories of grace-bench finetune)"
        return None
    summaries = load_summaries(results, required=False)
    if not summaries:
        return "no summary-*.json (run grace-bench eval CKPT --out DIR)"
    if kind == "wise" and sum(summary_alpha(s) is not None for s in summaries) < 2:
        return "fewer than two summaries record a WiSE-FT alpha (checkpoint.alpha)"
    return None


def draw_all(results: Sequence[str], out: str | Path, *, kinds: Sequence[str] = KINDS,
             formats: Sequence[str] | None = None, surface: bool = True, radar: bool = True,
             vmax: float | None = None) -> tuple[list[str], dict[str, str]]:
    """Draw each of ``kinds`` that has inputs into ``out``; returns (kinds drawn, {kind skipped: why})."""
    drawn: list[str] = []
    skipped: dict[str, str] = {}
    for kind in kinds:
        why = missing_inputs(kind, results)
        if why is None:
            try:
                for path in draw(kind, list(results), out, formats=formats, surface=surface, radar=radar, vmax=vmax):
                    print(path)
                drawn.append(kind)
                continue
            except UserError as exc:  # inputs exist but lack what this figure needs (e.g. no density arrays)
                why = str(exc)
        skipped[kind] = why
        print(f"note: skipped {kind}: {why}")
    return drawn, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="analysis/figures.py", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result files or directories (searched recursively)")
    p.add_argument("--out", required=True, help="output directory for the figures")
    p.add_argument("--format", dest="formats", action="append", choices=("png", "pdf", "svg"),
                   help="file format; repeat for several (default: png and pdf)")
    p.add_argument("--only", action="append", choices=KINDS, help="draw only this kind; repeat for several")
    p.add_argument("--no-surface", action="store_true", help="landscape: skip the 3D surfaces of 2D grids")
    p.add_argument("--no-radar", action="store_true", help="tradeoff: skip the radar chart")
    p.add_argument("--vmax", type=float, default=None, help="landscape: cap the loss colour scale at this value")
    args = p.parse_args(argv)
    for item in args.results:
        if not Path(item).exists():
            raise UserError(f"no such file or directory: {item}; pass result files or the --out directory of a run")
    kinds = list(dict.fromkeys(args.only)) if args.only else list(KINDS)
    drawn, skipped = draw_all(args.results, args.out, kinds=kinds, formats=args.formats,
                              surface=not args.no_surface, radar=not args.no_radar, vmax=args.vmax)
    if not drawn:
        raise UserError(f"no figure could be drawn from {', '.join(args.results)} (skipped: {', '.join(skipped)}); "
                        "pass directories holding summary-*.json, geometry-*.json or run logs")
    print(f"drew {', '.join(drawn)} into {args.out}" + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    from analysis.tables import entry

    sys.exit(entry(main))
