"""The study's rows for the statistics: each label's metric values per seed and the per-image flags of the
result files its summaries were built from (``None`` for files written before the flags were stored)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grace_bench.results.records import AdversarialResult, CleanResult, SummaryRecord, result_from_file
from grace_bench.study.recipe import WISE, ZERO_SHOT
from grace_bench.study.stats import ImageFlags, Row


def _result_path(summary: SummaryRecord, entry: Any) -> Path | None:
    """The result file a summary entry names; when the study folder moved, the same name under this summary's
    own ``results/<fp12>/``."""
    name = entry.get("result_file") if isinstance(entry, Mapping) else None
    if not name:
        return None
    path = Path(name)
    if path.is_file():
        return path
    if summary.path is not None:
        moved = summary.path.parent / "results" / summary.fp12 / path.name
        if moved.is_file():
            return moved
    return None


def image_flags(summary: SummaryRecord) -> ImageFlags | None:
    """The per-image flags behind ``summary``'s numbers, or ``None`` when a result file lacks them."""
    clean, roles = {}, {}
    for name, entry in summary.per_dataset.items():
        path = _result_path(summary, entry)
        record = result_from_file(path) if path is not None else None
        flags = record.top1_flags if isinstance(record, CleanResult) else None
        if flags is None:
            return None
        clean[name], roles[name] = flags, str(entry.get("role"))
    id_names = [n for n, r in roles.items() if r == "id"]
    if not id_names:
        return None
    id_name = id_names[0]
    robust, key = None, ""
    adv_entry = summary.adversarial.get(id_name)
    if adv_entry is not None:
        path = _result_path(summary, adv_entry)
        record = result_from_file(path) if path is not None else None
        if not isinstance(record, AdversarialResult) or record.robust_flags is None or record.indices is None:
            return None
        robust = record.robust_flags
        ids = ",".join(map(str, record.indices))
        key = f"{id_name}/{record.attack}/{record.eps}/{zlib.crc32(ids.encode()):08x}"
    return ImageFlags(clean, roles, id_name, robust, key)


def study_rows(records: Sequence[Mapping[str, Any]], summaries: Sequence[SummaryRecord], *,
               with_flags: bool = True) -> dict[str, Row]:
    """One ``Row`` per label (the extra WiSE-FT α's of the curve aside) from ``report.entry_records``'s output
    and the summaries in the same order."""
    rows: dict[str, Row] = {}
    for record, summary in zip(records, summaries):
        label = record["label"]
        if label.startswith(f"{WISE} α"):
            continue
        row = rows.setdefault(label, Row(label, {}, {}, fixed=label == ZERO_SHOT, group=record["group"]))
        values = dict(record["aggregates"])
        values.update({f"top1/{k}": v for k, v in record["per_dataset"].items()})
        row.values[record["seed"]] = values
        row.flags[record["seed"]] = image_flags(summary) if with_flags else None
    return rows
