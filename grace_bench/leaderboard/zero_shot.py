"""The zero-shot table of the robust-CLIP papers, built from eval summaries of one protocol.

Per ε: a robust-accuracy table and a clean-accuracy table, one row per model, one column per dataset, then the
average over the datasets and the average without ImageNet (how TeCoA, PMG-AFT, TGA-ZSR and FARE report it).
Rows come from each summary's ``zero_shot`` block (``grace_bench.eval.summary.zero_shot_aggregates``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

AVG = "Average"
AVG_NO_IMAGENET = "Average w/o ImageNet"


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.2f}"


def zero_shot_rows(summary: Mapping[str, Any], eps: str) -> dict[str, dict[str, Any]]:
    """``{"robust": {dataset: acc, AVG: .., AVG_NO_IMAGENET: ..}, "clean": {...}}`` of one summary at ``eps``."""
    block = (summary.get("zero_shot") or {}).get(eps) or {}
    out: dict[str, dict[str, Any]] = {"robust": {}, "clean": {}}
    rows = block.get("datasets") or {}
    order = block.get("order") or []
    for name in [n for n in order if n in rows] + [n for n in rows if n not in order]:
        row = rows[name]
        out["robust"][name] = row.get("robust")
        out["clean"][name] = row.get("clean")
    for kind in ("robust", "clean"):
        out[kind][AVG] = block.get(f"{kind}_avg")
        out[kind][AVG_NO_IMAGENET] = block.get(f"{kind}_avg_without_imagenet")
    return out


def eps_values(summaries: Sequence[Any]) -> list[str]:
    """Every ε with zero-shot results, in the order the summaries list them."""
    seen: list[str] = []
    for s in summaries:
        data = getattr(s, "data", s)
        for eps in data.get("zero_shot") or {}:
            if eps not in seen:
                seen.append(eps)
    return seen


def zero_shot_markdown(summaries: Sequence[Any], title: str = "zero-shot robustness",
                       extra_rows: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]] | None = None) -> str:
    """Markdown tables (robust and clean accuracy, %, per ε) of ``summaries`` (``SummaryRecord`` or dicts).

    ``extra_rows[eps][label] = {"robust": {column: %}, "clean": {column: %}}`` adds quoted rows (e.g. a paper's own
    numbers, already in %), shown after ours.
    """
    lines = [f"# {title}", "", "Clean accuracy is the same at every ε (one clean pass); it is shown once.", ""]
    for index, eps in enumerate(eps_values(summaries) or list(extra_rows or {})):
        rows = []
        for s in summaries:
            data = getattr(s, "data", s)
            label = str(data.get("label") or (data.get("checkpoint") or {}).get("spec") or "?")
            rows.append((label, zero_shot_rows(data, eps), False))
        for label, quoted in ((extra_rows or {}).get(eps) or {}).items():
            rows.append((label, {k: {c: v / 100 for c, v in cols.items()} for k, cols in quoted.items()}, True))
        datasets: list[str] = []
        for _, r, _ in rows:
            for name in r.get("robust", {}):
                if name not in (AVG, AVG_NO_IMAGENET) and name not in datasets:
                    datasets.append(name)
        columns = datasets + [AVG, AVG_NO_IMAGENET]
        for kind in ("robust", "clean") if index == 0 else ("robust",):
            heading = f"## robust accuracy (%), ε = {eps}" if kind == "robust" else "## clean accuracy (%)"
            lines += [heading, "", "| model | " + " | ".join(columns) + " |",
                      "|---|" + "---:|" * len(columns)]
            for label, r, quoted in rows:
                cells = [_pct(r.get(kind, {}).get(c)) for c in columns]
                lines.append(f"| {label}{' (quoted)' if quoted else ''} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)
