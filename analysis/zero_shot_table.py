"""The zero-shot robustness table in the papers' layout (robust and clean accuracy per dataset, the average and the
average without ImageNet), from grace-bench summaries of one protocol, with the papers' own numbers beside ours.

    python analysis/zero_shot_table.py RESULTS_DIR... --protocol tecoa|fare|tga-zsr|... [--out FILE.md] [--no-paper]

Quoted numbers are the papers' published averages, each with its source (repository, commit, file and line);
only averages the repositories print are quoted, and only under the protocol whose settings produced them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.tables import entry  # noqa: E402
from grace_bench.errors import UserError  # noqa: E402
from grace_bench.leaderboard.zero_shot import AVG, AVG_NO_IMAGENET, zero_shot_markdown  # noqa: E402

TGA = "zhyblue424/TGA-ZSR@663fe573dc9609893bb47b2d8303c034d9dd2ded README.md"
FARE = "chs20/RobustVLM@7de10ee209f169d415c07aa0abaae4806c402b14 README.md"

# protocol -> eps -> label -> {"robust": {column: %}, "clean": {column: %}}, and the sources of each block.
# TGA-ZSR's README: average over its 16 datasets (ImageNet and Tiny-ImageNet included), ViT-B/32, PGD-100 at 1/255
# (its TGA-ZSR.py:48-50), every method re-evaluated by the TGA-ZSR authors.
_TGA_ROWS = {
    "CLIP": (4.90, 64.42), "TeCoA": (28.06, 45.81), "PMG-AFT": (32.51, 46.60), "FARE": (18.25, 59.85),
    "TGA-ZSR": (42.09, 56.44), "Comp-TGA": (44.46, 55.44),
}
_TGA_LINES = {"CLIP": 100, "TeCoA": 103, "PMG-AFT": 104, "FARE": 105, "TGA-ZSR": 107, "Comp-TGA": 108}
# FARE's README, ViT-L/14 "Avg. zero-shot" (CLIP-only; its zero-shot datasets, ImageNet reported apart):
# clean (lines 98-130), 2/255 (lines 164-188), 4/255 (lines 222-246); AutoAttack APGD-CE + APGD-T, 1000 images.
_FARE_ROWS = {  # label: (clean, robust 2/255, robust 4/255, clean line, 2/255 line, 4/255 line)
    "TeCoA2 ViT-L/14": (60.0, 43.6, 27.0, 106, 164, 222), "FARE2 ViT-L/14": (67.0, 43.1, 20.5, 114, 172, 230),
    "TeCoA4 ViT-L/14": (54.2, 42.3, 31.9, 122, 180, 238), "FARE4 ViT-L/14": (61.1, 45.9, 32.4, 130, 188, 246),
}


def paper_rows(protocol: str) -> tuple[dict, list[str]]:
    """The quoted rows for ``protocol`` and one source line per row."""
    rows: dict = {}
    sources: list[str] = []
    if protocol in ("tga-zsr", "tecoa", "pmg-aft"):
        block = rows.setdefault("1/255", {})
        for label, (robust, clean) in _TGA_ROWS.items():
            name = f"{label} [TGA-ZSR]"
            block[name] = {"robust": {AVG: robust}, "clean": {AVG: clean}}
            sources.append(f"{name}: {TGA}:{_TGA_LINES[label]} (16-dataset average, PGD-100, ε=1/255)")
        if protocol != "tga-zsr":
            sources.append("note: the TGA-ZSR numbers use PGD-100 over 16 datasets; the tecoa preset's dataset list "
                           "differs (no Tiny-ImageNet), pmg-aft's code default is PGD-10")
    if protocol == "fare":
        for label, (clean, r2, r4, lc, l2, l4) in _FARE_ROWS.items():
            name = f"{label} [FARE]"
            rows.setdefault("2/255", {})[name] = {"robust": {AVG_NO_IMAGENET: r2}, "clean": {AVG_NO_IMAGENET: clean}}
            rows.setdefault("4/255", {})[name] = {"robust": {AVG_NO_IMAGENET: r4}, "clean": {AVG_NO_IMAGENET: clean}}
            sources.append(f"{name}: {FARE}:{lc},{l2},{l4} (Avg. zero-shot: clean, 2/255, 4/255)")
    return rows, sources


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="result folders or summary files")
    p.add_argument("--protocol", required=True, help="protocol family of the summaries (tecoa, fare, tga-zsr, ...)")
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file (atomic)")
    p.add_argument("--no-paper", action="store_true", help="leave out the papers' quoted numbers")
    return p


def main(argv: list[str] | None = None) -> int:
    from grace_bench.results.records import load_summaries
    from grace_bench.utils.atomic import atomic_write_text

    args = build_parser().parse_args(argv)
    summaries = [s for s in load_summaries(args.results) if s.protocol_family == args.protocol]
    if not summaries:
        raise UserError(f"no summary of protocol '{args.protocol}' under {', '.join(args.results)}; run "
                        f"`grace-bench eval CKPT --protocol {args.protocol} --out DIR` first")
    rows, sources = ({}, []) if args.no_paper else paper_rows(args.protocol)
    text = zero_shot_markdown(summaries, title=f"Zero-shot robustness, protocol {args.protocol}", extra_rows=rows)
    if sources:
        text += "\nQuoted (papers' own numbers, their models and data):\n\n" + "\n".join(f"- {s}" for s in sources)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(entry(main))
