"""Typed records of the result files grace-bench writes, and their tolerant readers.

- ``CleanResult`` / ``AdversarialResult``: ``OUT/results/<fp12>/<dataset>-<kind>-<hash>.json`` (``grace-bench eval``)
- ``SummaryRecord``: ``OUT/summary-<fp12>.json`` (``grace-bench eval``)
- ``GeometryRecord``: ``OUT/geometry-<kind>-<fp12>.json`` and its ``.npz`` arrays (``grace-bench geometry``)

Each has ``from_json(data, path)`` and ``to_json()``; ``to_json()`` returns the file's full JSON (fields this code
does not know are kept). A field that is absent reads as ``None``. Files of the current schema load as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grace_bench.errors import UserError
from grace_bench.results.flags import flag_list, unpack_flags
from grace_bench.results.metrics import GEOMETRY_CONTAINERS, get_metric, register_declared
from grace_bench.results.values import as_float, lookup
from grace_bench.utils.npz import NPZ_READ_ERRORS

RESULT_SCHEMA = "grace-bench/result/v1"
SUMMARY_SCHEMA = "grace-bench/summary/v1"
GEOMETRY_SCHEMA = "grace-bench/geometry/v1"
GEOMETRY_KINDS = ("hessian", "sharpness", "landscape", "features", "weights")

# Fields of result files that, when present, must be JSON objects (checked on load, so a hand-edited or
# corrupt file is one line naming it, not a traceback deep in a table builder).
SUMMARY_OBJECT_FIELDS = ("checkpoint", "per_dataset", "adversarial", "aggregates", "protocol")
GEOMETRY_OBJECT_FIELDS = ("checkpoint", "config", "protocol", "metrics", "report", "result")
RESULT_OBJECT_FIELDS = ("checkpoint", "config", "dataset", "metrics")

GEOMETRY_NAME = re.compile(r"^geometry-(?P<kind>[a-z0-9_]+)-(?P<fp>[0-9a-fA-F]+)\.json$")
# summary-<fp12>.json (grace protocol) or summary-<fp12>-<protocol family>.json (tecoa, fare, custom-tecoa...)
SUMMARY_NAME = re.compile(r"^summary-(?P<fp>[0-9a-fA-F]+)(?:-(?P<family>[a-z0-9][a-z0-9-]*))?\.json$")


def _fp12(data: Mapping, path: Path | None, pattern: re.Pattern) -> str:
    fp = (data.get("checkpoint") or {}).get("fingerprint")
    if fp:
        return str(fp)[:12]
    m = pattern.match(path.name) if path is not None else None
    return m.group("fp")[:12] if m else (path.stem if path is not None else "")


@dataclass
class _Record:
    """A result file: where it was read from and its JSON."""

    path: Path | None
    data: dict = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | Path | None = None) -> _Record:
        return cls(Path(path) if path is not None else None, dict(data))

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)

    @property
    def checkpoint(self) -> dict:
        return dict(self.data.get("checkpoint") or {})

    @property
    def fingerprint(self) -> str | None:
        fp = self.checkpoint.get("fingerprint")
        return str(fp) if fp else None

    @property
    def versions(self) -> dict:
        return dict(self.data.get("versions") or {})

    @property
    def created(self) -> str | None:
        return self.data.get("created")


@dataclass
class _EvalResult(_Record):
    """One finished eval result (clean or adversarial) of one dataset."""

    @property
    def kind(self) -> str:
        return str(self.data.get("kind"))

    @property
    def dataset(self) -> str | None:
        return (self.data.get("dataset") or {}).get("name")

    @property
    def suite(self) -> str | None:
        return (self.data.get("dataset") or {}).get("suite")

    @property
    def role(self) -> str | None:
        return (self.data.get("dataset") or {}).get("role")

    @property
    def metrics(self) -> dict:
        return dict(self.data.get("metrics") or {})

    @property
    def config(self) -> dict:
        return dict(self.data.get("config") or {})

    @property
    def config_hash(self) -> str | None:
        return self.data.get("config_hash")

    @property
    def n(self) -> int | None:
        n = self.metrics.get("n")
        return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None


@dataclass
class CleanResult(_EvalResult):
    """``<dataset>-clean-<hash>.json``: zero-shot top-1 (and top-5) on one dataset."""

    @property
    def top1(self) -> float | None:
        return as_float(self.metrics.get("top1"))

    @property
    def top5(self) -> float | None:
        return as_float(self.metrics.get("top5"))

    @property
    def top1_flags(self) -> np.ndarray | None:
        """Per-image top-1 correct flags in index order (``None`` for files written before they were stored)."""
        return unpack_flags(self.metrics.get("top1_flags"), str(self.path or "clean result"))


@dataclass
class AdversarialResult(_EvalResult):
    """``<dataset>-adversarial-<hash>.json``: robust accuracy under one attack."""

    @property
    def attack(self) -> str | None:
        return self.metrics.get("attack")

    @property
    def eps(self) -> str | None:
        return self.metrics.get("eps")

    @property
    def norm(self) -> str | None:
        return self.metrics.get("norm")

    @property
    def clean_acc(self) -> float | None:
        return as_float(self.metrics.get("clean_acc"))

    @property
    def robust_acc(self) -> float | None:
        return as_float(self.metrics.get("robust_acc"))

    @property
    def robust_flags(self) -> np.ndarray | None:
        """Per-image robust flags, in the order of ``indices``."""
        return flag_list(self.metrics.get("robust_flags"), str(self.path or "adversarial result"))

    @property
    def indices(self) -> list[int] | None:
        """The dataset indices that were attacked."""
        idx = self.metrics.get("indices")
        return [int(i) for i in idx] if isinstance(idx, list) else None


@dataclass
class SummaryRecord(_Record):
    """One ``summary-<fp12>.json``: the evaluation of one checkpoint on one suite."""

    @property
    def fp12(self) -> str:
        return _fp12(self.data, self.path, SUMMARY_NAME)

    @property
    def label(self) -> str:
        return str(self.data.get("label") or self.checkpoint.get("spec") or self.fp12)

    @property
    def protocol_family(self) -> str:
        """The protocol preset group of this summary (``grace`` for summaries written before presets)."""
        return str((self.data.get("protocol") or {}).get("family") or "grace")

    @property
    def suite(self) -> str | None:
        return self.data.get("suite")

    @property
    def aggregates(self) -> dict:
        return dict(self.data.get("aggregates") or {})

    @property
    def per_dataset(self) -> dict:
        return dict(self.data.get("per_dataset") or {})

    @property
    def adversarial(self) -> dict:
        return dict(self.data.get("adversarial") or {})

    def top1(self, dataset: str) -> float | None:
        """Clean top-1 of ``dataset`` (an entry may be an object with ``top1`` or, in old files, a number)."""
        entry = self.per_dataset.get(dataset)
        return as_float(entry.get("top1")) if isinstance(entry, Mapping) else as_float(entry)

    def metric(self, key: str) -> float | None:
        """The value of the registered metric ``key`` (see ``results.metrics``) in this summary."""
        return get_metric(key).read(self)

    def find(self, path: str) -> Any:
        return lookup(self.data, path)

    @property
    def protocol(self) -> dict:
        """The summary's ``protocol`` plus the suite and the attack settings of its adversarial entries."""
        proto = dict(self.data.get("protocol") or {})
        if self.data.get("suite") is not None:
            proto.setdefault("suite", self.data["suite"])
        for entry in self.adversarial.values():
            for key in ("attack", "eps", "norm"):
                if isinstance(entry, Mapping) and entry.get(key) is not None:
                    proto.setdefault(key, entry[key])
        return proto


@dataclass
class GeometryRecord(_Record):
    """One ``geometry-<kind>-<fp12>.json`` and its ``.npz`` arrays (loaded on first use, no pickle)."""

    kind: str = ""
    _arrays: dict | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | Path | None = None, kind: str | None = None
                  ) -> GeometryRecord:
        path = Path(path) if path is not None else None
        m = GEOMETRY_NAME.match(path.name) if path is not None else None
        kind = kind or data.get("kind") or (m.group("kind") if m else "")
        return cls(path, dict(data), str(kind))

    @property
    def fp12(self) -> str:
        return _fp12(self.data, self.path, GEOMETRY_NAME)

    @property
    def config(self) -> dict:
        return dict(self.data.get("config") or self.data.get("protocol") or {})

    def label(self, labels_by_fp: Mapping[str, str] | None = None) -> str:
        """The record's own label, else the label of the summary with the same fingerprint, else spec or fp."""
        if self.data.get("label"):
            return str(self.data["label"])
        if labels_by_fp and self.fp12 in labels_by_fp:
            return labels_by_fp[self.fp12]
        return str(self.checkpoint.get("spec") or self.fp12)

    def metric(self, key: str) -> float | None:
        """The value of the registered metric ``key`` when it is one of this record's kind."""
        m = get_metric(key)
        return m.read(self) if m.source == self.kind else None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {}
            npz = self.path.with_suffix(".npz") if self.path is not None else None
            if npz is not None and npz.is_file():
                try:
                    with np.load(npz, allow_pickle=False) as z:
                        self._arrays = {k: np.asarray(z[k]) for k in z.files}
                except NPZ_READ_ERRORS as exc:  # empty, torn or garbled
                    raise UserError(f"cannot read arrays {npz} ({type(exc).__name__}); delete it and its .json, "
                                    "then re-run the geometry command") from exc
        return self._arrays

    def find(self, *paths: str) -> Any:
        """The first of ``paths`` present in the JSON, at top level or under metrics/report/result."""
        for path in paths:
            for prefix in GEOMETRY_CONTAINERS:
                value = lookup(self.data, prefix + path)
                if value is not None:
                    return value
        return None

    def array(self, *names: str) -> np.ndarray | None:
        """The first of ``names`` found in the NPZ, else as a numeric list in the JSON."""
        for name in names:
            if name in self.arrays:
                return self.arrays[name]
            value = self.find(name)
            if isinstance(value, list):
                try:
                    return np.asarray(value, dtype=float)
                except (TypeError, ValueError):
                    continue
        return None


# --------------------------------------------------------------------------------------------- readers


def read_json(path: str | Path) -> dict:
    """Parse a JSON object from ``path`` or raise a one-line UserError."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"result file not found: {path}; check the path") from exc
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
        raise UserError(f"{path} is not valid JSON ({exc}); delete it and re-run the command that wrote it") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not an object; pass a grace-bench result file")
    return obj


def check_field_types(path: Path, data: Mapping, object_fields: Sequence[str], fix: str) -> None:
    """Raise a one-line UserError if a field of ``object_fields`` is present but not a JSON object."""
    for name in object_fields:
        value = data.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise UserError(f"{path}: field '{name}' holds a JSON {type(value).__name__}, not an object; {fix}")


def find_files(inputs: Sequence[str | Path] | str | Path, pattern: str) -> list[Path]:
    """Files named like ``pattern`` (glob): given files are kept as they are, directories searched recursively."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob(pattern) if q.is_file() and not q.name.startswith(".")))
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"no such file or directory: {p}; pass result files or the --out directory of a run")
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def summary_from_file(path: str | Path) -> SummaryRecord:
    """One summary file, checked: right schema, object fields where objects belong."""
    path = Path(path)
    data = read_json(path)
    if data.get("schema") != SUMMARY_SCHEMA:
        raise UserError(f"{path} has schema {data.get('schema')!r}, not {SUMMARY_SCHEMA!r}; "
                        "pass summary files written by grace-bench eval")
    fix = "re-run grace-bench eval to rewrite it"
    check_field_types(path, data, SUMMARY_OBJECT_FIELDS, fix)
    check_field_types(path, data.get("protocol") or {}, ("definitions",), fix)
    for section in ("per_dataset", "adversarial"):
        bad = [k for k, v in (data.get(section) or {}).items()
               if not isinstance(v, Mapping) and not (section == "per_dataset" and as_float(v) is not None)]
        if bad:
            raise UserError(f"{path}: '{section}.{bad[0]}' is not an object; {fix}")
    return SummaryRecord.from_json(data, path)


def geometry_from_file(path: str | Path) -> GeometryRecord:
    """One geometry file, checked: a geometry schema (or none, for old files) and a kind matching its name."""
    path = Path(path)
    m = GEOMETRY_NAME.match(path.name)
    data = read_json(path)
    schema = data.get("schema")
    if schema is not None and not str(schema).startswith("grace-bench/geometry"):
        raise UserError(f"{path} has schema {schema!r}; pass geometry files from grace-bench geometry")
    check_field_types(path, data, GEOMETRY_OBJECT_FIELDS, "re-run the grace-bench geometry command")
    file_kind = m.group("kind") if m else data.get("kind")
    if file_kind is None:
        raise UserError(f"{path} names no geometry kind; pass a geometry-<kind>-<fp>.json file")
    if data.get("kind") not in (None, file_kind):
        raise UserError(f"{path} says kind {data.get('kind')!r} but is named {file_kind!r}; rename or re-run it")
    declared = data.get("columns")
    if declared is not None:
        if isinstance(declared, list) and any(isinstance(e, Mapping) and e.get("source") != file_kind
                                              for e in declared):
            raise UserError(f"{path} declares a column of another kind than {file_kind!r}; re-run it")
        register_declared(declared, str(path))
    return GeometryRecord.from_json(data, path, str(file_kind))


def result_from_file(path: str | Path) -> CleanResult | AdversarialResult:
    """One eval result file (``results/<fp12>/<dataset>-<kind>-<hash>.json``) as its typed record."""
    path = Path(path)
    data = read_json(path)
    if data.get("schema") != RESULT_SCHEMA:
        raise UserError(f"{path} has schema {data.get('schema')!r}, not {RESULT_SCHEMA!r}; "
                        "pass result files written by grace-bench eval")
    check_field_types(path, data, RESULT_OBJECT_FIELDS, "delete it and re-run grace-bench eval")
    kinds = {"clean": CleanResult, "adversarial": AdversarialResult}
    if data.get("kind") not in kinds:
        raise UserError(f"{path} has kind {data.get('kind')!r}, not clean or adversarial; "
                        "delete it and re-run grace-bench eval")
    return kinds[data["kind"]].from_json(data, path)


def load_summaries(inputs: Sequence[str | Path] | str | Path, *, required: bool = True) -> list[SummaryRecord]:
    """Every ``summary-*.json`` under ``inputs`` (files given directly must be summaries)."""
    records = [summary_from_file(p) for p in find_files(inputs, "summary-*.json") if SUMMARY_NAME.match(p.name)]
    if required and not records:
        raise UserError(f"no summary-*.json found in {_describe(inputs)}; run `grace-bench eval ... --out DIR` first")
    return records


def load_geometry(inputs: Sequence[str | Path] | str | Path, kind: str | None = None) -> list[GeometryRecord]:
    """Every ``geometry-<kind>-<fp>.json`` under ``inputs`` (all kinds when ``kind`` is None)."""
    records = []
    pattern = f"geometry-{kind}-*.json" if kind else "geometry-*.json"
    for path in find_files(inputs, pattern):
        m = GEOMETRY_NAME.match(path.name)
        if not m or (kind and m.group("kind") != kind):
            continue
        records.append(geometry_from_file(path))
    return records


def load_results(inputs: Sequence[str | Path] | str | Path) -> list[CleanResult | AdversarialResult]:
    """Every eval result (``*-clean-*.json``, ``*-adversarial-*.json``) under ``inputs``."""
    paths = [p for p in find_files(inputs, "*.json")
             if re.search(r"-(clean|adversarial)-[0-9a-f]+\.json$", p.name)]
    return [result_from_file(p) for p in paths]


def load_record(path: str | Path) -> SummaryRecord | GeometryRecord | CleanResult | AdversarialResult:
    """Any grace-bench result file as its typed record, chosen by its schema."""
    data = read_json(path)
    schema = str(data.get("schema") or "")
    if schema == SUMMARY_SCHEMA:
        return summary_from_file(path)
    if schema.startswith("grace-bench/geometry") or GEOMETRY_NAME.match(Path(path).name):
        return geometry_from_file(path)
    if schema == RESULT_SCHEMA:
        return result_from_file(path)
    raise UserError(f"{path} has schema {schema or None!r}, not a grace-bench summary, geometry or eval result; "
                    "pass a file written by grace-bench eval or geometry")


def labels_by_fingerprint(summaries: Iterable[SummaryRecord]) -> dict[str, str]:
    return {s.fp12: s.label for s in summaries}


def geometry_by_fingerprint(records: Iterable[GeometryRecord]) -> dict[str, dict[str, GeometryRecord]]:
    """fp12 -> {kind: record} (the last record of a kind wins)."""
    out: dict[str, dict[str, GeometryRecord]] = {}
    for rec in records:
        out.setdefault(rec.fp12, {})[rec.kind] = rec
    return out


def _describe(inputs: Sequence[str | Path] | str | Path) -> str:
    if isinstance(inputs, (str, Path)):
        return str(inputs)
    return ", ".join(str(p) for p in inputs) or "(nothing)"
