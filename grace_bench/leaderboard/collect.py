"""Old import path of the result readers, kept for callers outside the package: use ``grace_bench.results``.

``geometry_value`` reads one leaderboard geometry column through the metrics table (``results.metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping

from grace_bench.attacks.threat import describe_eps as format_eps
from grace_bench.results.metrics import get_metric
from grace_bench.results.records import (
    GEOMETRY_KINDS,
    SUMMARY_SCHEMA,
    GeometryRecord,
    SummaryRecord,
    check_field_types,
    find_files,
    labels_by_fingerprint,
    load_geometry,
    load_summaries,
    read_json,
)
from grace_bench.results.values import as_float, lookup

__all__ = [
    "GEOMETRY_KINDS", "SUMMARY_SCHEMA", "GeometryRecord", "SummaryRecord", "as_float", "check_field_types",
    "find_files", "format_eps", "geometry_value", "labels_by_fingerprint", "load_geometry", "load_summaries",
    "lookup", "read_json",
]


def geometry_value(records: Mapping[str, GeometryRecord], column: str) -> float | None:
    """The geometry metric ``column`` from the records of one checkpoint (keyed by kind)."""
    return get_metric(column).read_kinds(records)
