"""Method-level tables: pool the summaries (and geometry) of several checkpoints per label, e.g. three
seeds of ``grace``, into one row of mean ± sample std.

Accuracies stay fractions in [0, 1] here and in the JSON; Markdown shows percent with 2 decimals. The HM of
a row is the mean of the per-checkpoint HMs; ``hm_of_means`` is the HM recomputed from the mean ID, OOD avg
and Adv (both are kept, the table says which one it shows).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grace_bench.attacks.naming import describe_attack, summaries_robust_title
from grace_bench.attacks.threat import describe_eps as format_eps
from grace_bench.errors import UserError
from grace_bench.leaderboard.build import MISSING, ROLE_ORDER
from grace_bench.results.metrics import METRICS, metrics
from grace_bench.results.records import GeometryRecord, SummaryRecord, load_geometry, load_summaries
from grace_bench.results.values import harmonic_mean

SCHEMA = "grace-bench/method-table/v1"
# protocol fields that must agree before checkpoints are pooled into one row (or rows compared in one table)
POOL_KEYS = ("suite", "attack", "eps", "norm", "n_adv", "limit", "templates_hash", "classnames_hash", "version")
HM_OF_MEANS = "hm_of_means"
DATASET_PREFIX = "top1:"
HM_NOTE = ("HM is the mean over checkpoints of each checkpoint's 3 / (1/ID + 1/OOD avg + 1/Adv), not the HM of "
           "the mean columns; the HM recomputed from the mean ID, OOD avg and Adv is HM(means) (JSON: hm_of_means).")


@dataclass
class Stat:
    """Mean and sample standard deviation (ddof=1) of the values one column takes over a label's checkpoints."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


@dataclass
class MethodRow:
    """One label (method) pooled over its checkpoints (seeds)."""

    label: str
    summaries: list[SummaryRecord]
    aggregates: dict[str, Stat]
    per_dataset: dict[str, Stat]
    geometry: dict[str, Stat]
    roles: dict[str, str] = field(default_factory=dict)
    geometry_files: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of checkpoints (seeds) pooled in this row."""
        return len(self.summaries)

    @property
    def fingerprints(self) -> list[str]:
        return [s.fp12 for s in self.summaries]

    @property
    def protocol(self) -> dict[str, Any]:
        return pool_protocol(self.summaries[0])

    @property
    def hm_of_means(self) -> float | None:
        """HM of the mean ID, OOD avg and Adv; None unless every checkpoint has all three."""
        parts = [self.aggregates.get(k) for k in ("id", "ood_avg", "adv")]
        if any(p is None or p.n != self.n for p in parts):
            return None
        return harmonic_mean([p.mean for p in parts])

    def stat(self, key: str) -> Stat | None:
        """The statistics of column ``key`` (aggregate, ``top1:<dataset>`` or geometry); None when unknown."""
        if key.startswith(DATASET_PREFIX):
            return self.per_dataset.get(key[len(DATASET_PREFIX):])
        if key in self.aggregates:
            return self.aggregates[key]
        return self.geometry.get(key)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n": self.n,
            "fingerprints": self.fingerprints,
            "summary_files": [str(s.path) for s in self.summaries],
            "geometry_files": list(self.geometry_files),
            "protocol": self.protocol,
            "aggregates": {k: v.to_json() for k, v in self.aggregates.items()},
            "hm_mean_of_seeds": self.aggregates["hm"].mean if "hm" in self.aggregates else None,
            HM_OF_MEANS: self.hm_of_means,
            "per_dataset": {k: {"role": self.roles.get(k), **v.to_json()} for k, v in self.per_dataset.items()},
            "geometry": {k: v.to_json() for k, v in self.geometry.items()},
        }


def pool_protocol(summary: SummaryRecord) -> dict[str, Any]:
    """The protocol fields in ``POOL_KEYS`` of one summary (ε normalised to ``k/255`` form)."""
    proto = summary.protocol
    out = {k: proto.get(k) for k in POOL_KEYS}
    out["eps"] = format_eps(out["eps"])
    if summary.protocol_family != "grace":  # a protocol preset: never pooled with another protocol's rows
        out["preset"] = summary.protocol_family
    return out


def _protocol_diff(summaries: Sequence[SummaryRecord]) -> dict[str, list[Any]]:
    diff = {}
    for key in POOL_KEYS:
        seen: list[Any] = []
        for s in summaries:
            v = pool_protocol(s)[key]
            if v not in seen:
                seen.append(v)
        if len(seen) > 1:
            diff[key] = seen
    return diff


def _diff_text(diff: Mapping[str, Sequence[Any]]) -> str:
    return "; ".join(f"{k}: {' vs '.join(map(str, v))}" for k, v in diff.items())


def shared_protocol(rows: Sequence[MethodRow]) -> dict[str, Any]:
    """Protocol fields shared by all rows; a field that differs reads ``"mixed: a | b"``."""
    summaries = [s for r in rows for s in r.summaries]
    if not summaries:
        return {}
    diff = _protocol_diff(summaries)
    shared = pool_protocol(summaries[0])
    for k, v in diff.items():
        shared[k] = "mixed: " + " | ".join(map(str, v))
    return shared


def dedupe(summaries: Iterable[SummaryRecord]) -> list[SummaryRecord]:
    """One summary per checkpoint fingerprint and protocol (``POOL_KEYS``, suite included): the most recently
    written file wins, so a re-evaluation replaces the old one rather than counting as another seed."""
    best: dict[tuple[str, str], SummaryRecord] = {}
    for s in summaries:
        key = (s.fp12, json.dumps(pool_protocol(s), sort_keys=True, default=str))
        old = best.get(key)
        if old is None or s.path.stat().st_mtime >= old.path.stat().st_mtime:
            best[key] = s
    return list(best.values())


def relabel(summary: SummaryRecord, labels_map: Mapping[str, str] | None) -> str:
    """The method name of ``summary``: ``labels_map`` looked up by label, then by fingerprint (12 hex)."""
    if labels_map:
        if summary.label in labels_map:
            return str(labels_map[summary.label])
        if summary.fp12 in labels_map:
            return str(labels_map[summary.fp12])
    return summary.label


def _geometry_by_fp(records: Iterable[GeometryRecord]) -> dict[str, dict[str, GeometryRecord]]:
    """fp12 -> kind -> record; when a kind repeats for one checkpoint the newest file wins."""
    out: dict[str, dict[str, GeometryRecord]] = {}
    for rec in records:
        kinds = out.setdefault(rec.fp12, {})
        old = kinds.get(rec.kind)
        if old is None or rec.path.stat().st_mtime >= old.path.stat().st_mtime:
            kinds[rec.kind] = rec
    return out


def _build_row(label: str, summaries: list[SummaryRecord], geometry: Mapping[str, Mapping[str, GeometryRecord]]
               ) -> MethodRow:
    aggregates: dict[str, Stat] = {}
    for metric in metrics("aggregate"):
        aggregates[metric.key] = Stat([v for v in (metric.read(s) for s in summaries) if v is not None])
    per_dataset: dict[str, Stat] = {}
    roles: dict[str, str] = {}
    for s in summaries:
        for ds, entry in s.per_dataset.items():
            value = s.top1(ds)
            stat = per_dataset.setdefault(ds, Stat([]))
            if value is not None:
                stat.values.append(value)
            if isinstance(entry, Mapping) and entry.get("role"):
                roles.setdefault(ds, str(entry["role"]))
    geo: dict[str, Stat] = {}
    files: list[str] = []
    for s in summaries:
        recs = geometry.get(s.fp12, {})
        files += [str(r.path) for r in recs.values()]
        for metric in metrics("geometry"):
            value = metric.read_kinds(recs)
            if value is not None:
                geo.setdefault(metric.key, Stat([])).values.append(value)
    return MethodRow(label, summaries, aggregates, per_dataset, geo, roles, files)


def method_table(
    records: Iterable[SummaryRecord | GeometryRecord],
    order: Sequence[str] | None = None,
    *,
    labels_map: Mapping[str, str] | None = None,
    allow_mixed: bool = False,
) -> list[MethodRow]:
    """Group summaries by label (after ``labels_map``) into ``MethodRow``s; geometry records join by fingerprint.

    With ``order`` the rows are those labels, in that order, that have summaries (others are dropped);
    without it every label appears, by mean HM (highest first). Summaries of one checkpoint and suite count once.
    Pooling summaries whose protocols differ (``POOL_KEYS``), within a row or across the rows, raises a
    UserError unless ``allow_mixed``.
    """
    summaries: list[SummaryRecord] = []
    geometry: list[GeometryRecord] = []
    for rec in records:
        if isinstance(rec, SummaryRecord):
            summaries.append(rec)
        elif isinstance(rec, GeometryRecord):
            geometry.append(rec)
        else:
            raise TypeError(f"method_table takes SummaryRecord or GeometryRecord, not {type(rec).__name__}")
    groups: dict[str, list[SummaryRecord]] = {}
    for s in sorted(dedupe(summaries), key=lambda s: str(s.path)):
        groups.setdefault(relabel(s, labels_map), []).append(s)
    labels = [lb for lb in order if lb in groups] if order is not None else list(groups)
    if not allow_mixed:
        for label in labels:
            diff = _protocol_diff(groups[label])
            if diff:
                raise UserError(f"label '{label}' pools summaries with different protocols ({_diff_text(diff)}); "
                                "evaluate every seed the same way, pick one suite with --suite, or pass --allow-mixed")
        diff = _protocol_diff([s for lb in labels for s in groups[lb]])
        if diff:
            raise UserError(f"rows {', '.join(labels)} use different protocols ({_diff_text(diff)}); put one protocol "
                            "in one table (select the results or --suite) or pass --allow-mixed")
    geo = _geometry_by_fp(geometry)
    rows = [_build_row(label, groups[label], geo) for label in labels]
    if order is None:
        rows.sort(key=lambda r: (r.aggregates["hm"].mean is None, -(r.aggregates["hm"].mean or 0.0), r.label))
    return rows


def load_records(inputs: Sequence[str | Path] | str | Path, suite: str | None = None
                 ) -> list[SummaryRecord | GeometryRecord]:
    """Summaries (only those of ``suite`` when given) and geometry records under ``inputs``."""
    summaries = load_summaries(inputs)
    if suite is not None:
        summaries = [s for s in summaries if s.data.get("suite") == suite]
        if not summaries:
            raise UserError(f"no summary of suite '{suite}' in {', '.join(map(str, _as_list(inputs)))}; "
                            "check --suite or evaluate with grace-bench eval --suite")
    return [*summaries, *load_geometry(inputs)]


def _as_list(inputs: Sequence[str | Path] | str | Path) -> list[str | Path]:
    return [inputs] if isinstance(inputs, (str, Path)) else list(inputs)


def dataset_columns(rows: Sequence[MethodRow]) -> list[str]:
    """``top1:<dataset>`` keys of every dataset in ``rows``: ID, then OOD, then natural-adversarial; within a
    role in the order the suite declares them (summary files store them sorted by name)."""
    roles: dict[str, str] = {}
    for r in rows:
        for ds in r.per_dataset:
            roles.setdefault(ds, r.roles.get(ds, "other"))
    declared = _suite_order(list(dict.fromkeys(str(r.protocol.get("suite")) for r in rows)))
    seen = list(roles)

    def position(d: str) -> tuple[int, int, int]:
        return ROLE_ORDER.get(roles[d], 9), declared.index(d) if d in declared else len(declared), seen.index(d)

    return [DATASET_PREFIX + d for d in sorted(roles, key=position)]


def _suite_order(suites: Sequence[str]) -> list[str]:
    from grace_bench.data.suites import get_suite  # imports torch: only when dataset columns are asked for

    order: list[str] = []
    for name in suites:
        try:
            order += [d.name for d in get_suite(name).datasets if d.name not in order]
        except UserError:  # an unregistered suite only loses the declared order
            continue
    return order


def column_title(key: str, rows: Sequence[MethodRow] = ()) -> str:
    """Header text of a column key; the robust column names the attack the ``rows`` recorded."""
    if key.startswith(DATASET_PREFIX):
        return key[len(DATASET_PREFIX):]
    if key == HM_OF_MEANS:
        return "HM(means)"
    title = METRICS[key].title if key in METRICS else key
    if key == "autoattack" and rows:
        return summaries_robust_title([s.data for r in rows for s in r.summaries], title)
    return title


def is_accuracy(key: str) -> bool:
    return (key.startswith(DATASET_PREFIX) or key == HM_OF_MEANS
            or (key in METRICS and METRICS[key].group == "aggregate"))


def format_cell(row: MethodRow, key: str) -> str:
    """``mean ± std`` (percent, 2 decimals, for accuracies; 4 significant digits for geometry). The std shows
    only when more than one value was pooled; ``(k/n)`` marks a column measured on k of the row's n checkpoints."""
    if key == HM_OF_MEANS:
        value = row.hm_of_means
        return MISSING if value is None else f"{100 * value:.2f}"
    stat = row.stat(key)
    if stat is None or stat.mean is None:
        return MISSING
    if is_accuracy(key):
        text = f"{100 * stat.mean:.2f}" + (f" ± {100 * stat.std:.2f}" if stat.std is not None else "")
    else:
        text = f"{stat.mean:.4g}" + (f" ± {stat.std:.2g}" if stat.std is not None else "")
    if stat.n < row.n:
        text += f" ({stat.n}/{row.n})"
    return text


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def method_markdown(
    rows: Sequence[MethodRow],
    columns: Sequence[str],
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    lead_columns: Sequence[tuple[str, Mapping[str, str]]] = (),
    extra_columns: Sequence[tuple[str, Mapping[str, str]]] = (),
) -> str:
    """A Markdown table: method, ``lead_columns``, n, then ``columns`` (keys as in ``MethodRow.stat`` plus
    ``hm_of_means``), then ``extra_columns``; a lead/extra column is (title, {label: cell text}). Below the
    table come the notes: how cells read, the HM definition when HM is shown, then ``notes``."""
    head = ["method", *[t for t, _ in lead_columns], "n", *[column_title(c, rows) for c in columns],
            *[t for t, _ in extra_columns]]
    lines = [f"## {title}", ""] if title else []
    lines.append("| " + " | ".join(_escape(h) for h in head) + " |")
    lines.append("|" + "|".join(["---", *["---" for _ in lead_columns], ":-:",
                                 *["--:" for _ in head[2 + len(lead_columns):]]]) + "|")
    partial = False
    for r in rows:
        stats = [format_cell(r, c) for c in columns]
        partial = partial or any(t.endswith(f"/{r.n})") for t in stats)
        cells = [r.label, *[cells.get(r.label, "") for _, cells in lead_columns], str(r.n), *stats,
                 *[cells.get(r.label, MISSING) for _, cells in extra_columns]]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    told = ["Cells are mean ± sample std (ddof=1) over the n checkpoints (seeds) of a method; the std shows when "
            "n > 1" + ("; accuracies in percent" if any(is_accuracy(c) for c in columns) else "")
            + ("; `(k/n)`: measured on k of the n checkpoints" if partial else "") + f"; `{MISSING}`: not measured."]
    if "hm" in columns or HM_OF_MEANS in columns:
        told.append(HM_NOTE)
    lines += [""] + [f"- {n}" for n in [*told, *notes]]
    return "\n".join(lines) + "\n"


def method_json(rows: Sequence[MethodRow], **extra: Any) -> dict[str, Any]:
    """The JSON twin of a method table (fractions in [0, 1]; both HM variants per row)."""
    return {
        "schema": SCHEMA,
        "units": "fractions in [0, 1] for accuracies; geometry in its own units",
        "std": "sample standard deviation (ddof=1) over a method's checkpoints; null when n < 2",
        "hm": HM_NOTE,
        "protocol": shared_protocol(rows),
        **extra,
        "rows": [r.to_json() for r in rows],
    }


def protocol_text(protocol: Mapping[str, Any]) -> str:
    """One sentence stating the protocol of a table, from the results."""
    suite = protocol.get("suite") or "not recorded"
    attack = protocol.get("attack") or "not recorded"
    if attack == "none":
        adv = "no attack (Robust and Adv not measured)"
    else:
        shown = describe_attack(attack) if not str(attack).startswith("mixed") else attack
        adv = f"{shown} ({attack}) {protocol.get('norm') or ''} ε={protocol.get('eps') or '?'} on " \
              f"n={protocol.get('n_adv')} ID images"
        adv = " ".join(adv.split())
    text = f"Protocol (from the summaries): suite {suite}; Robust = {adv}; Adv = mean(Robust, Nat-adv)"
    if protocol.get("limit") is not None:
        text += f"; clean accuracy on the first {protocol['limit']} images per dataset"
    return text + "."

