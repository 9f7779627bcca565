"""Find and read grace-bench result files (summaries, geometry JSON + NPZ) for leaderboards and figures.

Readers follow ``docs/INTERFACES.md`` ("Results") and tolerate missing optional parts: a field that is
absent reads as ``None``. Every geometry field the toolkit reads is listed once in ``GEOMETRY_FIELDS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from grace_bench.errors import UserError
from grace_bench.utils.npz import NPZ_READ_ERRORS

SUMMARY_SCHEMA = "grace-bench/summary/v1"
GEOMETRY_KINDS = ("hessian", "sharpness", "landscape", "features", "weights")

# Leaderboard geometry column -> (geometry kind, dotted paths tried in order). Each path is tried at the top
# level of the JSON and under "metrics", "report" and "result". ``[0]`` indexes a list; a list of numbers read
# for "lambda_max" gives its maximum; a dict with "mean"/"value" reads that. The first path is the canonical one.
GEOMETRY_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lambda_max": ("hessian", ("lambda_max", "top_eigenvalues.eigenvalues", "top_eigenvalues")),
    "trace": ("hessian", ("trace.trace", "trace")),
    "trace_se": ("hessian", ("trace.trace_se", "trace_se", "trace_std")),
    "weight_drift": ("weights", ("overall.relative", "relative_drift", "weight_drift")),
    "cka_to_ref": ("features", ("cka_to_ref", "cka.linear", "cka")),
}
CONTAINERS = ("", "metrics.", "report.", "result.")

# Fields of result files that, when present, must be JSON objects (checked on load, so a hand-edited or
# corrupt file is one line naming it, not a traceback deep in a table builder).
SUMMARY_OBJECT_FIELDS = ("checkpoint", "per_dataset", "adversarial", "aggregates", "protocol")
GEOMETRY_OBJECT_FIELDS = ("checkpoint", "config", "protocol", "metrics", "report", "result")

_GEOMETRY_NAME = re.compile(r"^geometry-(?P<kind>[a-z0-9_]+)-(?P<fp>[0-9a-fA-F]+)\.json$")
_SUMMARY_NAME = re.compile(r"^summary-(?P<fp>[0-9a-fA-F]+)\.json$")


@dataclass
class SummaryRecord:
    """One ``summary-<fp12>.json``: the evaluation of one checkpoint on one suite."""

    path: Path
    data: dict

    @property
    def fp12(self) -> str:
        fp = (self.data.get("checkpoint") or {}).get("fingerprint")
        if fp:
            return str(fp)[:12]
        m = _SUMMARY_NAME.match(self.path.name)
        return m.group("fp")[:12] if m else self.path.stem

    @property
    def label(self) -> str:
        ckpt = self.data.get("checkpoint") or {}
        return str(self.data.get("label") or ckpt.get("spec") or self.fp12)

    @property
    def aggregates(self) -> dict:
        return dict(self.data.get("aggregates") or {})

    @property
    def per_dataset(self) -> dict:
        return dict(self.data.get("per_dataset") or {})

    @property
    def protocol(self) -> dict:
        """The summary's ``protocol`` plus the suite and the attack settings of its adversarial entries."""
        proto = dict(self.data.get("protocol") or {})
        if self.data.get("suite") is not None:
            proto.setdefault("suite", self.data["suite"])
        for entry in (self.data.get("adversarial") or {}).values():
            for key in ("attack", "eps", "norm"):
                if isinstance(entry, Mapping) and entry.get(key) is not None:
                    proto.setdefault(key, entry[key])
        return proto


@dataclass
class GeometryRecord:
    """One ``geometry-<kind>-<fp12>.json`` and its ``.npz`` arrays (loaded on first use, no pickle)."""

    path: Path
    kind: str
    data: dict
    _arrays: dict | None = field(default=None, repr=False)

    @property
    def fp12(self) -> str:
        fp = (self.data.get("checkpoint") or {}).get("fingerprint")
        if fp:
            return str(fp)[:12]
        m = _GEOMETRY_NAME.match(self.path.name)
        return m.group("fp")[:12] if m else self.path.stem

    @property
    def config(self) -> dict:
        return dict(self.data.get("config") or self.data.get("protocol") or {})

    def label(self, labels_by_fp: Mapping[str, str] | None = None) -> str:
        """The record's own label, else the label of the summary with the same fingerprint, else spec or fp."""
        if self.data.get("label"):
            return str(self.data["label"])
        if labels_by_fp and self.fp12 in labels_by_fp:
            return labels_by_fp[self.fp12]
        return str((self.data.get("checkpoint") or {}).get("spec") or self.fp12)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            npz = self.path.with_suffix(".npz")
            self._arrays = {}
            if npz.is_file():
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
            for prefix in CONTAINERS:
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


def read_json(path: Path) -> dict:
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


def load_summaries(inputs: Sequence[str | Path] | str | Path, *, required: bool = True) -> list[SummaryRecord]:
    """Every ``summary-*.json`` under ``inputs`` (files given directly must be summaries)."""
    records = []
    for path in find_files(inputs, "summary-*.json"):
        if not _SUMMARY_NAME.match(path.name):
            continue
        data = read_json(path)
        if data.get("schema") != SUMMARY_SCHEMA:
            raise UserError(
                f"{path} has schema {data.get('schema')!r}, not {SUMMARY_SCHEMA!r}; "
                "pass summary files written by grace-bench eval"
            )
        check_field_types(path, data, SUMMARY_OBJECT_FIELDS, "re-run grace-bench eval to rewrite it")
        check_field_types(path, data.get("protocol") or {}, ("definitions",), "re-run grace-bench eval to rewrite it")
        for section in ("per_dataset", "adversarial"):
            bad = [k for k, v in (data.get(section) or {}).items()
                   if not isinstance(v, Mapping) and not (section == "per_dataset" and as_float(v) is not None)]
            if bad:
                raise UserError(f"{path}: '{section}.{bad[0]}' is not an object; re-run grace-bench eval to rewrite it")
        records.append(SummaryRecord(path, data))
    if required and not records:
        raise UserError(f"no summary-*.json found in {_describe(inputs)}; run `grace-bench eval ... --out DIR` first")
    return records


def load_geometry(inputs: Sequence[str | Path] | str | Path, kind: str | None = None) -> list[GeometryRecord]:
    """Every ``geometry-<kind>-<fp>.json`` under ``inputs`` (all kinds when ``kind`` is None)."""
    records = []
    pattern = f"geometry-{kind}-*.json" if kind else "geometry-*.json"
    for path in find_files(inputs, pattern):
        m = _GEOMETRY_NAME.match(path.name)
        if not m or (kind and m.group("kind") != kind):
            continue
        data = read_json(path)
        schema = data.get("schema")
        if schema is not None and not str(schema).startswith("grace-bench/geometry"):
            raise UserError(f"{path} has schema {schema!r}; pass geometry files from grace-bench geometry")
        check_field_types(path, data, GEOMETRY_OBJECT_FIELDS, "re-run the grace-bench geometry command")
        file_kind = m.group("kind")
        if data.get("kind") not in (None, file_kind):
            raise UserError(f"{path} says kind {data.get('kind')!r} but is named {file_kind!r}; rename or re-run it")
        records.append(GeometryRecord(path, file_kind, data))
    return records


def lookup(obj: Any, dotted: str) -> Any:
    """Follow ``a.b[0].c`` through dicts and lists; ``None`` when any step is missing."""
    cur = obj
    for part in dotted.split("."):
        m = re.fullmatch(r"([^\[\]]+)((?:\[\d+\])*)", part)
        if m is None:
            return None
        name, idx = m.group(1), m.group(2)
        if not isinstance(cur, Mapping) or name not in cur:
            return None
        cur = cur[name]
        for i in re.findall(r"\[(\d+)\]", idx):
            if not isinstance(cur, (list, tuple)) or int(i) >= len(cur):
                return None
            cur = cur[int(i)]
    return cur


def as_float(value: Any) -> float | None:
    """A finite float from a number, or from a dict's ``mean``/``value``; otherwise ``None``."""
    if isinstance(value, Mapping):
        value = value.get("mean", value.get("value"))
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def geometry_value(records: Mapping[str, GeometryRecord], column: str) -> float | None:
    """Read leaderboard geometry column ``column`` from the records of one checkpoint (keyed by kind)."""
    kind, paths = GEOMETRY_FIELDS[column]
    rec = records.get(kind)
    if rec is None:
        return None
    for path in paths:
        raw = rec.find(path)
        if column == "lambda_max" and isinstance(raw, list):
            nums = [v for v in (as_float(x) for x in raw) if v is not None]
            raw = max(nums) if nums else None
        value = as_float(raw)
        if value is not None:
            return value
    return None


def format_eps(eps: Any) -> str | None:
    """ε as a fraction string: ``"4/255"`` stays, ``0.0156862745`` becomes ``"4/255"``, other floats ``%g``."""
    if eps is None:
        return None
    if isinstance(eps, str):
        return eps.strip()
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)):
        return str(eps)
    value = float(eps)
    if not np.isfinite(value):
        return str(value)
    k = value * 255
    if value > 0 and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    frac = Fraction(value).limit_denominator(1000)
    if frac.denominator > 1 and abs(float(frac) - value) < 1e-12:
        return f"{frac.numerator}/{frac.denominator}"
    return f"{value:g}"


def labels_by_fingerprint(summaries: Iterable[SummaryRecord]) -> dict[str, str]:
    return {s.fp12: s.label for s in summaries}


def _describe(inputs: Sequence[str | Path] | str | Path) -> str:
    if isinstance(inputs, (str, Path)):
        return str(inputs)
    return ", ".join(str(p) for p in inputs) or "(nothing)"
