"""The typed results layer: records of the files grace-bench writes, the one table of metrics, the one writer.

- ``records``: ``CleanResult``, ``AdversarialResult``, ``SummaryRecord``, ``GeometryRecord`` and their readers
  (``load_summaries``, ``load_geometry``, ``load_results``, ``load_record``).
- ``metrics``: ``Metric`` and ``register_metric``: each metric's key, JSON path, title and direction.
- ``writer``: ``write_record(path, record, kind=...)`` stamps schema, versions, threads, hardware and time.

Torch-free at import (the CLI's start-up imports it).
"""

from __future__ import annotations

from grace_bench.results.metrics import METRICS, Metric, get_metric, metrics, register_metric
from grace_bench.results.records import (
    AdversarialResult,
    CleanResult,
    GeometryRecord,
    SummaryRecord,
    find_files,
    geometry_by_fingerprint,
    labels_by_fingerprint,
    load_geometry,
    load_record,
    load_results,
    load_summaries,
    read_json,
)
from grace_bench.results.values import as_float, harmonic_mean, lookup
from grace_bench.results.writer import package_versions, stamp, write_record

__all__ = [
    "METRICS", "AdversarialResult", "CleanResult", "GeometryRecord", "Metric", "SummaryRecord", "as_float",
    "find_files", "geometry_by_fingerprint", "get_metric", "harmonic_mean", "labels_by_fingerprint",
    "load_geometry", "load_record", "load_results", "load_summaries", "lookup", "metrics", "package_versions",
    "read_json", "register_metric", "stamp", "write_record",
]
