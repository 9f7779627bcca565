"""The one writer of result records: stamps schema, versions, threads, hardware and creation time, writes atomically.

    write_record(path, {"checkpoint": ..., "config": ..., ...}, kind="geometry")

``kind`` picks the schema (``result``, ``summary``, ``geometry``, ``study``); fields the caller already set
(``schema``, ``created``, ``versions``) are kept, so an eval result can carry the versions of the run that made it.
A geometry record also gets ``columns``: the declarations of its kind's registered metrics that are not built in.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from grace_bench.results.metrics import declared_for
from grace_bench.results.records import GEOMETRY_SCHEMA, RESULT_SCHEMA, SUMMARY_SCHEMA
from grace_bench.utils.atomic import atomic_write_json
from grace_bench.utils.runtime_info import runtime_info

SCHEMAS = {
    "result": RESULT_SCHEMA,
    "summary": SUMMARY_SCHEMA,
    "geometry": GEOMETRY_SCHEMA,
    "study": "grace-bench/study/v1",
}


def package_versions() -> dict[str, Any]:
    """Versions of the packages that can change a number, and the machine (``runtime``: threads, CPU, GPU)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("grace-bench", "torch", "torchvision", "open_clip_torch", "pyautoattack", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["runtime"] = runtime_info()
    return out


def stamp(record: Mapping[str, Any], *, kind: str) -> dict[str, Any]:
    """``record`` with ``schema`` first, then ``created`` and ``versions`` (which holds ``runtime``: threads, CPU,
    GPU), unless the record already has them."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown record kind {kind!r}; choose one of: {', '.join(SCHEMAS)}")
    out: dict[str, Any] = {"schema": record.get("schema") or SCHEMAS[kind]}
    out["created"] = record.get("created") or datetime.now(timezone.utc).isoformat()
    out.update({k: v for k, v in record.items() if k not in ("schema", "created")})
    if not out.get("versions"):
        out["versions"] = package_versions()
    if kind == "geometry" and "columns" not in out:
        declared = declared_for(str(out.get("kind")))
        if declared:  # so a leaderboard built elsewhere shows this diagnostic's columns
            out["columns"] = declared
    return out


def write_record(path: str | os.PathLike, record: Mapping[str, Any], *, kind: str) -> dict[str, Any]:
    """Stamp ``record`` (see ``stamp``) and write it to ``path`` atomically; returns what was written."""
    stamped = stamp(record, kind=kind)
    atomic_write_json(Path(path), stamped)
    return stamped
