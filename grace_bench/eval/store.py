"""The result store: one JSON per (checkpoint fingerprint, dataset, kind, eval-config hash), written atomically."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from grace_bench.utils.atomic import atomic_write_json

RESULT_SCHEMA = "grace-bench/result/v1"
SUMMARY_SCHEMA = "grace-bench/summary/v1"


def package_versions() -> dict[str, Any]:
    """Versions of the packages that can change a number, and the machine (``runtime``: threads, CPU, GPU)."""
    from importlib.metadata import PackageNotFoundError, version

    from grace_bench.utils.runtime_info import runtime_info

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("grace-bench", "torch", "torchvision", "open_clip_torch", "pyautoattack", "numpy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["runtime"] = runtime_info()
    return out


class ResultStore:
    """Result files under ``root``: ``results/<fp12>/<dataset>-<kind>-<hash>.json`` and attack/eval state."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def result_path(self, fingerprint: str, dataset: str, kind: str, cfg_hash: str) -> Path:
        return self.root / "results" / fingerprint[:12] / f"{dataset}-{kind}-{cfg_hash}.json"

    def state_dir(self, fingerprint: str, dataset: str, kind: str, cfg_hash: str) -> Path:
        return self.root / "state" / fingerprint[:12] / f"{dataset}-{kind}-{cfg_hash}"

    def summary_path(self, fingerprint: str) -> Path:
        return self.root / f"summary-{fingerprint[:12]}.json"

    def load(self, path: Path) -> dict[str, Any] | None:
        """A finished result, or None if absent or unreadable (then it is recomputed)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if data.get("schema") == RESULT_SCHEMA else None

    def write(self, path: Path, record: dict[str, Any]) -> None:
        record = {"schema": RESULT_SCHEMA, "created": datetime.now(timezone.utc).isoformat(), **record}
        atomic_write_json(path, record)
