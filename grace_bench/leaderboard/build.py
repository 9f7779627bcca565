"""Build a leaderboard from result files: a Markdown table and its JSON twin, sorted by HM, with a
header that states each column's protocol (read from the results, never assumed), plus RobustBench model
cards and CLIP_benchmark-style JSON (see ``robustbench.py``).

Markdown shows percent with 2 decimals; JSON keeps fractions in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grace_bench.attacks.naming import describe_attack, summaries_robust_title
from grace_bench.attacks.threat import describe_eps as format_eps
from grace_bench.errors import UserError
from grace_bench.leaderboard.robustbench import write_exports
from grace_bench.results.metrics import Metric, get_metric, metrics
from grace_bench.results.records import (
    GeometryRecord,
    SummaryRecord,
    geometry_by_fingerprint,
    load_geometry,
    load_summaries,
)
from grace_bench.results.values import as_float
from grace_bench.utils.atomic import atomic_write_json, atomic_write_text
from grace_bench.utils.paths import check_writable_dir, ensure_writable_dir

SCHEMA = "grace-bench/leaderboard/v1"
MISSING = "—"
ROLE_ORDER = {"id": 0, "ood": 1, "nat-adv": 2}

@dataclass
class Column:
    key: str
    title: str
    group: str  # "dataset" | "aggregate" | "geometry"
    protocol: str
    role: str | None = None  # dataset columns: id | ood | nat-adv


@dataclass
class Row:
    summary: SummaryRecord
    geometry: dict[str, GeometryRecord] = field(default_factory=dict)
    label: str = ""

    def value(self, col: Column) -> float | None:
        if col.group == "dataset":
            return self.summary.top1(col.key)
        return self.metric(get_metric(col.key))

    def metric(self, metric: Metric) -> float | None:
        """The value of ``metric`` for this row: from its summary or its geometry records."""
        return metric.read(self.summary) if metric.group == "aggregate" else metric.read_kinds(self.geometry)


@dataclass
class Leaderboard:
    """A built leaderboard: columns, rows in rank order, the Markdown text, the JSON object, written files."""

    name: str
    columns: list[Column]
    rows: list[Row]
    markdown: str
    data: dict
    files: list[Path]


def _distinct(values: Sequence[Any]) -> list[Any]:
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _join(values: Sequence[Any]) -> str:
    vals = [str(v) for v in _distinct(values)]
    if not vals:
        return "not recorded"
    return vals[0] if len(vals) == 1 else "mixed: " + " | ".join(vals)


# summary protocol fields naming the preset: leaderboards are split by family, never mixed on these
PRESET_KEYS = {"preset", "based_on", "family", "preset_settings", "preset_overrides", "eps_list"}


def _check_protocols(summaries: Sequence[SummaryRecord], allow_mixed: bool) -> dict[str, Any]:
    """The protocol shared by all summaries; a key whose values differ fails unless ``allow_mixed``."""
    for s in summaries:
        if not s.data.get("protocol"):
            raise UserError(f"{s.path} has no 'protocol' field; re-run grace-bench eval so the table can state it")
    keys = sorted({k for s in summaries for k in s.protocol} - PRESET_KEYS)
    shared, mixed = {}, {}
    for k in keys:
        vals = [json.dumps(s.protocol.get(k), sort_keys=True, default=str) for s in summaries]
        if len(set(vals)) == 1:
            shared[k] = summaries[0].protocol.get(k)
        else:
            mixed[k] = _distinct([s.protocol.get(k) for s in summaries])
    if mixed and not allow_mixed:
        detail = "; ".join(f"{k}: {' vs '.join(map(str, v))}" for k, v in mixed.items())
        raise UserError(f"results use different protocols ({detail}); build one leaderboard per protocol or pass "
                        "--allow-mixed")
    return {"shared": shared, "mixed": mixed}


def _attack_text(summaries: Sequence[SummaryRecord]) -> str:
    parts = []
    for s in summaries:
        for ds, entry in (s.data.get("adversarial") or {}).items():
            if not isinstance(entry, Mapping):
                continue
            proto = s.protocol
            attack = describe_attack({**entry, "attack": entry.get("attack") or proto.get("attack")})
            norm = entry.get("norm") or proto.get("norm")
            eps = format_eps(entry.get("eps", proto.get("eps")))
            n = entry.get("n") or (s.per_dataset.get(ds) or {}).get("n_adv") or proto.get("n_adv")
            text = f"{attack}" + (f" {norm}" if norm else "") + (f" ε={eps}" if eps else "")
            text += f" on {ds}" + (f" (n={n})" if n else "")
            parts.append(text)
    return _join(parts) if parts else "no adversarial results"


def _suite_order(summaries: Sequence[SummaryRecord]) -> list[str]:
    """Dataset names in the order their suites declare them (JSON files may have sorted the keys)."""
    from grace_bench.data.suites import get_suite

    order: list[str] = []
    for suite in _distinct([s.data.get("suite") for s in summaries]):
        try:
            names = [d.name for d in get_suite(str(suite)).datasets]
        except Exception:  # an unregistered or broken suite only loses the ordering
            continue
        order.extend(n for n in names if n not in order)
    return order


def _dataset_columns(summaries: Sequence[SummaryRecord]) -> list[Column]:
    roles: dict[str, str] = {}
    ns: dict[str, list] = {}
    for s in summaries:
        for ds, entry in s.per_dataset.items():
            entry = entry if isinstance(entry, Mapping) else {}
            roles.setdefault(ds, str(entry.get("role") or "other"))
            ns.setdefault(ds, []).append(entry.get("n"))
    declared = _suite_order(summaries)
    seen = list(roles)

    def position(d: str) -> tuple[int, int, int]:
        return (ROLE_ORDER.get(roles[d], 9), declared.index(d) if d in declared else len(declared), seen.index(d))

    order = sorted(roles, key=position)
    cols = []
    for ds in order:
        n = _join(ns[ds])
        cols.append(Column(ds, ds, "dataset", f"clean top-1 accuracy, role {roles[ds]}, n={n}", roles[ds]))
    return cols


def _aggregate_columns(summaries: Sequence[SummaryRecord], dataset_cols: Sequence[Column]) -> list[Column]:
    """Aggregate columns, defined by the summaries' ``protocol.definitions`` when recorded, with the datasets
    and attack actually used."""
    by_role: dict[str, list[str]] = {}
    for col in dataset_cols:
        by_role.setdefault(str(col.role), []).append(col.key)
    used = {
        "id": ", ".join(by_role.get("id", [])) or "none",
        "ood_avg": ", ".join(by_role.get("ood", [])) or "none",
        "nat_adv": ", ".join(by_role.get("nat-adv", [])) or "none",
        "autoattack": _attack_text(summaries),
    }
    cols = []
    for metric in metrics("aggregate"):
        key, title, fallback = metric.key, metric.title, metric.definition
        if key == "autoattack":  # named after the attack the summaries recorded
            title = summaries_robust_title([s.data for s in summaries], title)
        recorded = _distinct([(s.data.get("protocol") or {}).get("definitions", {}).get(key) for s in summaries])
        definition = " | ".join(map(str, recorded)) if recorded else fallback
        if key in used:
            definition += f"; here: {used[key]}"
        cols.append(Column(key, title, "aggregate", definition))
    return cols


def _geometry_protocol(records: Sequence[GeometryRecord]) -> str:
    keys = []
    for r in records:
        for k in r.config:
            if k not in keys:
                keys.append(k)
    parts = []
    for k in keys:
        vals = [r.config.get(k) for r in records]
        if any(isinstance(v, (dict, list)) for v in vals):
            continue
        parts.append(f"{k}={_join(vals)}")
    return ", ".join(parts)


def _geometry_columns(rows: Sequence[Row]) -> list[Column]:
    cols = []
    for metric in metrics("geometry", leaderboard=True):
        present = [r for r in rows if r.metric(metric) is not None]
        if not present:
            continue
        proto = _geometry_protocol([r.geometry[metric.source] for r in present])
        cols.append(Column(metric.key, metric.title, "geometry", metric.definition + (f"; {proto}" if proto else "")))
    return cols


def _sort_key(row: Row) -> tuple:
    hm = as_float(row.summary.aggregates.get("hm"))
    return (hm is None, -(hm or 0.0), row.label)


def _fmt(col: Column, value: float | None, row: Row) -> str:
    if value is None:
        return MISSING
    if col.group == "dataset":
        return f"{100 * value:.2f}"
    metric = get_metric(col.key)
    error = row.metric(get_metric(metric.error)) if metric.error else None
    return metric.format(value) + (f" ± {error:.2g}" if error is not None else "")


def _protocol_value(value: Any) -> str:
    """Protocol values for the header; long lists (e.g. 80 templates) are summarised by count and hash."""
    if isinstance(value, (list, tuple)) and len(value) > 6:
        digest = hashlib.sha256(json.dumps(value, default=str).encode()).hexdigest()[:12]
        return f"{len(value)} items (sha256 {digest})"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _markdown(name: str, columns: Sequence[Column], rows: Sequence[Row], protocol: Mapping[str, Any],
              n_files: int) -> str:
    lines = [f"# Leaderboard: {name}", ""]
    lines.append(f"Built by `grace-bench leaderboard build` from {n_files} summary file(s). Sorted by HM (highest "
                 "first). Accuracies in percent (2 decimals); geometry columns in their own units; "
                 f"`{MISSING}` = not measured.")
    lines += ["", "## Protocol", ""]
    for k, v in protocol["shared"].items():
        if v is None or k == "definitions":  # definitions are shown per column below
            continue
        shown = format_eps(v) if k in ("eps", "epsilon") else _protocol_value(v)
        lines.append(f"- **{k}**: {shown}")
    for k, v in protocol["mixed"].items():
        lines.append(f"- **{k}** (MIXED across rows): {' | '.join(_protocol_value(x) for x in v)}")
    lines += ["", "| column | how it was measured |", "|---|---|"]
    for c in columns:
        lines.append(f"| {c.title} | {c.protocol} |")
    lines += ["", "## Results", ""]
    head = ["#", "model", *[c.title for c in columns]]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join([":-:", "---", *["--:" for _ in columns]]) + "|")
    for rank, row in enumerate(rows, 1):
        cells = [str(rank), row.label.replace("|", "\\|"), *[_fmt(c, row.value(c), row) for c in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json(name: str, columns: Sequence[Column], rows: Sequence[Row], protocol: Mapping[str, Any]) -> dict:
    out_rows = []
    for rank, row in enumerate(rows, 1):
        s = row.summary
        out_rows.append({
            "rank": rank,
            "label": row.label,
            "checkpoint": s.data.get("checkpoint") or {},
            "summary_file": str(s.path),
            "per_dataset": {c.key: row.value(c) for c in columns if c.group == "dataset"},
            "aggregates": {c.key: row.value(c) for c in columns if c.group == "aggregate"},
            "geometry": _geometry_json(row, columns),
            "geometry_files": {k: str(g.path) for k, g in row.geometry.items()},
        })
    return {
        "schema": SCHEMA,
        "name": name,
        "sorted_by": "aggregates.hm (descending)",
        "units": "fractions in [0, 1] for accuracies; geometry in its own units",
        "protocol": protocol,
        "columns": [{"key": c.key, "title": c.title, "group": c.group, "protocol": c.protocol} for c in columns],
        "rows": out_rows,
    }


def _geometry_json(row: Row, columns: Sequence[Column]) -> dict[str, float | None]:
    """The row's geometry columns, each followed by its standard error when the metric has one."""
    out: dict[str, float | None] = {}
    for c in columns:
        if c.group == "geometry":
            out[c.key] = row.value(c)
            metric = get_metric(c.key)
            if metric.error:
                out[metric.error] = row.metric(get_metric(metric.error))
    return out


def _dedupe(summaries: list[SummaryRecord]) -> list[SummaryRecord]:
    """One summary per checkpoint fingerprint and suite: the most recently written file wins."""
    best: dict[tuple[str, Any], SummaryRecord] = {}
    for s in summaries:
        key = (s.fp12, s.data.get("suite"), s.protocol_family)
        old = best.get(key)
        if old is None or s.path.stat().st_mtime >= old.path.stat().st_mtime:
            best[key] = s
    return list(best.values())


def build_leaderboard(
    results: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    name: str | None = None,
    *,
    allow_mixed: bool = False,
    card_meta: Mapping[str, Mapping[str, Any]] | None = None,
    protocol: str | None = None,
) -> Leaderboard:
    """Read summaries and geometry results under ``results``; write into ``out_dir``:
    ``leaderboard.md``, ``leaderboard.json``, ``robustbench/<model>.json`` and
    ``clip_benchmark/<model>/<dataset>.json``. ``card_meta`` overrides RobustBench card fields per label
    (key ``"*"`` for all rows).
    """
    out_dir = check_writable_dir(out_dir)  # a file or read-only --out fails before any input is read
    name = name or out_dir.name
    summaries = _dedupe(load_summaries(results))
    families = sorted({s.protocol_family for s in summaries})
    if protocol is not None:
        summaries = [s for s in summaries if s.protocol_family == protocol]
        if not summaries:
            raise UserError(f"no summary of protocol '{protocol}' found; protocols present: {', '.join(families)}")
    elif len(families) > 1:
        raise UserError(f"results hold several protocols ({', '.join(families)}); a leaderboard never mixes them: "
                        "build one per protocol (protocol=..., or `grace-bench leaderboard build` without "
                        "--protocol writes one folder per protocol)")
    protocol = _check_protocols(summaries, allow_mixed)
    geometry = geometry_by_fingerprint(load_geometry(results))
    rows = [Row(s, geometry.get(s.fp12, {}), s.label) for s in summaries]
    labels = [r.label for r in rows]
    for r in rows:
        if labels.count(r.label) > 1:
            r.label = f"{r.label} ({r.summary.fp12[:7]})"
    rows.sort(key=_sort_key)
    dataset_cols = _dataset_columns(summaries)
    columns = dataset_cols + _aggregate_columns(summaries, dataset_cols) + _geometry_columns(rows)
    markdown = _markdown(name, columns, rows, protocol, len(summaries))
    data = _json(name, columns, rows, protocol)
    ensure_writable_dir(out_dir)
    files = [out_dir / "leaderboard.md", out_dir / "leaderboard.json"]
    atomic_write_text(files[0], markdown)
    atomic_write_json(files[1], data)
    files += write_exports(rows, out_dir, card_meta=card_meta)
    if any(s.data.get("zero_shot") for s in summaries):
        from grace_bench.leaderboard.zero_shot import zero_shot_markdown

        files.append(out_dir / "zero_shot.md")
        atomic_write_text(files[-1], zero_shot_markdown([s for s in summaries if s.data.get("zero_shot")], title=name))
    return Leaderboard(name, columns, rows, markdown, data, files)


def protocol_families(results: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The protocol families of the summaries under ``results`` (``grace``, ``tecoa``, ``fare``...)."""
    return sorted({s.protocol_family for s in load_summaries(results)})


def build_per_protocol(results: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                       name: str | None = None, **kw: Any) -> list[Leaderboard]:
    """One leaderboard per protocol family: ``out_dir`` itself when there is one, else ``out_dir/<family>/``."""
    families = protocol_families(results)
    if len(families) == 1:
        return [build_leaderboard(results, out_dir, name, protocol=families[0], **kw)]
    base = Path(out_dir)
    return [build_leaderboard(results, base / family, f"{name or base.name} · {family}", protocol=family, **kw)
            for family in families]
