"""Shared machinery of the table scripts (``table6_main.py``, ``table7_lora.py``, ``table8_ablations.py``):
the command line, reading results into method rows, the notes about missing rows, and atomic output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grace_bench.errors import UserError
from grace_bench.leaderboard.by_method import (
    HM_OF_MEANS,
    MethodRow,
    dataset_columns,
    dedupe,
    load_records,
    method_json,
    method_markdown,
    method_table,
    protocol_text,
    relabel,
    shared_protocol,
)
from grace_bench.results.metrics import metrics
from grace_bench.results.records import SummaryRecord
from grace_bench.utils.atomic import atomic_write_json, atomic_write_text

EXIT_USER_ERROR = 2
MAIN_COLUMNS = ("id", "ood_avg", "adv", "hm", "autoattack", "nat_adv")


def geometry_columns() -> tuple[str, ...]:
    """Geometry columns a table shows when some row has them: the leaderboard's, from the metrics table."""
    return tuple(m.key for m in metrics("geometry", leaderboard=True))


@dataclass
class TableSpec:
    """What one paper-style table shows: its rows (labels, in order) and columns."""

    name: str
    title: str
    order: tuple[str, ...]
    columns: tuple[str, ...] = MAIN_COLUMNS
    lead_title: str = ""
    lead: Mapping[str, str] = field(default_factory=dict)  # label -> short description of the row
    notes: tuple[str, ...] = ()


@dataclass
class Table:
    """A built table: rows found, labels asked for but absent, labels present but not shown; text and JSON."""

    rows: list[MethodRow]
    missing: list[str]
    others: list[str]
    markdown: str
    data: dict


def build_parser(spec: TableSpec, description: str) -> argparse.ArgumentParser:
    """The command line every table script shares."""
    p = argparse.ArgumentParser(prog=f"analysis/{spec.name}.py", description=description)
    p.add_argument("results", nargs="+", help="result files or directories (summary-*.json, geometry-*.json; "
                   "searched recursively)")
    p.add_argument("--out", default=None, metavar="FILE.md", help="also write the Markdown table here (atomically)")
    p.add_argument("--json", default=None, metavar="FILE.json", help="write the rows (fractions, both HMs) as JSON")
    p.add_argument("--labels-map", default=None, metavar="JSON",
                   help='map result labels (or 12-hex fingerprints) to method names: a JSON file or inline object, '
                   'e.g. \'{"runs/grace-s0": "grace"}\'')
    p.add_argument("--suite", default=None, help="use only the summaries of this suite (e.g. micro, imagenet)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="pool and compare summaries measured under different protocols")
    p.add_argument("--per-dataset", action="store_true", help="add each dataset's top-1 column")
    p.add_argument("--hm-of-means", action="store_true", help="add HM(means), the HM of the mean ID/OOD/Adv")
    return p


def parse_labels_map(text: str | None) -> dict[str, str]:
    """``--labels-map``: an inline JSON object or the path of a JSON file, mapping strings to strings."""
    if not text:
        return {}
    source = "--labels-map"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"--labels-map {text}: no such file; pass a JSON file or an inline JSON object")
        source, text = str(path), path.read_text()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source} is not valid JSON ({exc}); write an object like {{\"old label\": \"grace\"}}") \
            from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise UserError(f"{source} must be a JSON object mapping labels to method names (strings)")
    return obj


def make_table(
    spec: TableSpec,
    results: Sequence[str | Path],
    *,
    labels_map: Mapping[str, str] | None = None,
    suite: str | None = None,
    allow_mixed: bool = False,
    per_dataset: bool = False,
    hm_of_means: bool = False,
    extra_columns: Sequence[tuple[str, Mapping[str, str]]] = (),
    extra_notes: Sequence[str] = (),
) -> Table:
    """Read ``results`` and build ``spec``'s table; rows that have no summary are listed in a note."""
    records = load_records(results, suite)
    summaries = dedupe(r for r in records if isinstance(r, SummaryRecord))
    present = list(dict.fromkeys(relabel(s, labels_map) for s in summaries))
    rows = method_table(records, spec.order, labels_map=labels_map, allow_mixed=allow_mixed)
    missing = [lb for lb in spec.order if lb not in present]
    others = sorted(lb for lb in present if lb not in spec.order)
    if not rows:
        raise UserError(f"none of {', '.join(spec.order)} has a summary in {', '.join(map(str, results))}; "
                        "evaluate with grace-bench eval --label NAME or map labels with --labels-map")
    columns = list(spec.columns)
    if hm_of_means and HM_OF_MEANS not in columns:
        columns.insert(columns.index("hm") + 1 if "hm" in columns else len(columns), HM_OF_MEANS)
    columns += [g for g in geometry_columns() if any(r.geometry.get(g) for r in rows)]
    if per_dataset:
        columns += dataset_columns(rows)
    protocol = shared_protocol(rows)
    notes = [protocol_text(protocol), *spec.notes, *extra_notes]
    if missing:
        notes.append(f"Not in the results (no summary with this label, so no row): {', '.join(missing)}.")
    if others:
        notes.append(f"Other labels in the results, not part of this table: {', '.join(others)}.")
    title = f"{spec.title} (suite {protocol.get('suite') or 'not recorded'})"
    lead = [(spec.lead_title, spec.lead)] if spec.lead else []
    markdown = method_markdown(rows, columns, title=title, notes=notes, lead_columns=lead,
                               extra_columns=extra_columns)
    data = method_json(rows, table=spec.name, title=title, columns=columns, missing=missing, others=others,
                       notes=notes)
    return Table(rows, missing, others, markdown, data)


def run_table(spec: TableSpec, args: argparse.Namespace, *,
              extra_columns: Sequence[tuple[str, Mapping[str, str]]] = (), extra_notes: Sequence[str] = (),
              extra_json: Mapping[str, Any] | None = None) -> Table:
    """Build the table from parsed ``args``, print it and write ``--out`` / ``--json`` atomically."""
    table = make_table(spec, args.results, labels_map=parse_labels_map(args.labels_map), suite=args.suite,
                       allow_mixed=args.allow_mixed, per_dataset=args.per_dataset, hm_of_means=args.hm_of_means,
                       extra_columns=extra_columns, extra_notes=extra_notes)
    if extra_json:
        table.data.update(extra_json)
    print(table.markdown, end="")
    if args.out:
        atomic_write_text(args.out, table.markdown)
        print(f"\nwrote {args.out}")
    if args.json:
        atomic_write_json(args.json, table.data)
        print(f"wrote {args.json}")
    return table


def entry(main: Callable[[], int]) -> int:
    """Run a script's ``main``; a UserError prints one line and gives exit status 2."""
    try:
        return int(main() or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
