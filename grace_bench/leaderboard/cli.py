"""``grace-bench leaderboard build [RESULTS ...] --out leaderboards/NAME``."""

from __future__ import annotations

import argparse
from pathlib import Path

from grace_bench.errors import UserError
from grace_bench.results.records import read_json


def add_leaderboard_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``leaderboard`` (with its ``build`` action) on the top-level CLI's subparsers."""
    p = subparsers.add_parser("leaderboard", help="build leaderboards from result files")
    actions = p.add_subparsers(dest="leaderboard_action", metavar="ACTION")
    actions.required = True
    b = actions.add_parser(
        "build",
        help="Markdown + JSON table sorted by HM, RobustBench cards, CLIP_benchmark JSON",
        description="Read summary-*.json and geometry-*.json files (directories are searched recursively) and "
        "write leaderboard.md, leaderboard.json, robustbench/ and clip_benchmark/ into --out.",
    )
    b.add_argument("results", nargs="*", default=["results"],
                   help="result files or directories (default: results)")
    b.add_argument("--out", required=True, help="output directory, e.g. leaderboards/micro")
    b.add_argument("--name", default=None, help="leaderboard title (default: the --out directory name)")
    b.add_argument("--card-meta", default=None, metavar="FILE.json",
                   help='RobustBench card fields per model label, e.g. {"grace": {"link": "...", "venue": "..."}}; '
                   'key "*" applies to all')
    b.add_argument("--protocol", default=None,
                   help="only the summaries of this protocol (grace, tecoa, fare, custom-tecoa, ...); by default one "
                        "leaderboard per protocol found, in --out/<protocol>/ when there are several")
    b.add_argument("--allow-mixed", action="store_true",
                   help="allow rows measured under different protocols (the header marks the mixed fields)")
    b.set_defaults(func=run_leaderboard)
    return p


def run_leaderboard(args: argparse.Namespace) -> int:
    """Run ``grace-bench leaderboard ACTION``; prints the Markdown table and the files written."""
    from grace_bench.leaderboard.build import build_leaderboard, build_per_protocol
    from grace_bench.utils.paths import check_writable_dir

    if getattr(args, "leaderboard_action", "build") != "build":
        raise UserError(f"unknown leaderboard action '{args.leaderboard_action}'; use: grace-bench leaderboard build")
    check_writable_dir(args.out)
    card_meta = None
    if args.card_meta:
        if not Path(args.card_meta).is_file():
            raise UserError(f"--card-meta file not found: {args.card_meta}; check the path")
        card_meta = read_json(Path(args.card_meta))
        if not all(isinstance(v, dict) for v in card_meta.values()):
            raise UserError(f"{args.card_meta} must map model labels to objects of RobustBench card fields")
    kw = {"allow_mixed": args.allow_mixed, "card_meta": card_meta}
    if args.protocol:
        boards = [build_leaderboard(args.results, args.out, args.name, protocol=args.protocol, **kw)]
    else:
        boards = build_per_protocol(args.results, args.out, args.name, **kw)
    for board in boards:
        if len(boards) > 1:
            print(f"## {board.name}")
        table = board.markdown.split("## Results", 1)[-1].strip()
        print(table)
        cards = sum(1 for p in board.files if "robustbench" in p.parts)
        clipb = sum(1 for p in board.files if "clip_benchmark" in p.parts)
        print(f"\nwrote {board.files[0]}, {board.files[1].name}, {cards} RobustBench card(s) and {clipb} "
              f"CLIP_benchmark file(s) under {board.files[0].parent}")
    return 0
