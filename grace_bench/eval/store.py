"""The result store: one JSON per (checkpoint fingerprint, dataset, kind, eval-config hash), written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from grace_bench.eval.lock import ResultLock
from grace_bench.results.records import RESULT_SCHEMA, SUMMARY_SCHEMA
from grace_bench.results.writer import package_versions, write_record

__all__ = ["RESULT_SCHEMA", "SUMMARY_SCHEMA", "ResultStore", "package_versions"]


class ResultStore:
    """Result files under ``root``: ``results/<fp12>/<dataset>-<kind>-<hash>.json`` and attack/eval state."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def result_path(self, fingerprint: str, dataset: str, kind: str, cfg_hash: str) -> Path:
        return self.root / "results" / fingerprint[:12] / f"{dataset}-{kind}-{cfg_hash}.json"

    def state_dir(self, fingerprint: str, dataset: str, kind: str, cfg_hash: str) -> Path:
        return self.root / "state" / fingerprint[:12] / f"{dataset}-{kind}-{cfg_hash}"

    def summary_path(self, fingerprint: str, family: str | None = None) -> Path:
        """``summary-<fp12>.json`` (grace protocol) or ``summary-<fp12>-<protocol family>.json``."""
        suffix = f"-{family}" if family else ""
        return self.root / f"summary-{fingerprint[:12]}{suffix}.json"

    def results_dir(self, fingerprint: str) -> Path:
        return self.root / "results" / fingerprint[:12]

    def lock(self, path: Path, *, quiet: bool = False) -> ResultLock:
        """An inter-process lock on one result (or summary) path; a second process waits, then reuses it.

        Unless ``quiet``, a process that has to wait says for whom (pid and host) on stderr.
        """
        return ResultLock(path) if not quiet else ResultLock(path, on_wait=None)

    def finished(self, fingerprint: str) -> list[tuple[Path, dict[str, Any]]]:
        """Every finished result of the checkpoint ``fingerprint``, sorted by file name."""
        folder = self.results_dir(fingerprint)
        out = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = self.load(path)
            if record is None or record.get("kind") not in ("clean", "adversarial"):
                continue
            fp = (record.get("checkpoint") or {}).get("fingerprint")
            if fp and fp != fingerprint:
                continue
            out.append((path, record))
        return out

    def clear_state(self, fingerprint: str, dataset: str, kind: str, cfg_hash: str) -> None:
        """Remove a finished result's resume state, and the state folders it leaves empty."""
        folder = self.state_dir(fingerprint, dataset, kind, cfg_hash)
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):
            try:
                parent.rmdir()  # only succeeds when empty
            except OSError:
                break

    def load(self, path: Path) -> dict[str, Any] | None:
        """A finished result, or None if absent or unreadable (then it is recomputed)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) and data.get("schema") == RESULT_SCHEMA else None

    def write(self, path: Path, record: dict[str, Any]) -> None:
        write_record(path, record, kind="result")
