"""The one table of metrics: for each, its key, where it lives in a result record, its title and its direction.

Leaderboards, the study report, the analysis tables and the figures read every aggregate and geometry number
through this table. A new geometry diagnostic adds its leaderboard column by calling ``register_metric`` in its
own module (at import, torch-free), e.g.::

    register_metric(Metric("my_score", "my score", source="mykind", paths=("my_score.value",),
                           direction="lower", definition="what it measures"))

``source`` is ``"summary"`` for the eval aggregates, or the geometry kind whose record holds the value.
A geometry record written by ``results.write_record`` carries the declarations of its kind's non-built-in
metrics (``columns``), and ``load_geometry`` registers them, so the leaderboard of another process shows the
column without importing the diagnostic's module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from grace_bench.errors import UserError
from grace_bench.results.values import as_float, lookup

DIRECTIONS = ("higher", "lower", "none")
SUMMARY = "summary"


@dataclass(frozen=True)
class Metric:
    """One column of a results table.

    ``paths`` are dotted JSON paths tried in order (the first is the canonical one the current writers use;
    the rest are read for older files). A geometry path is tried at the top level of the record and under
    ``metrics``, ``report`` and ``result``. With ``reduce="max"`` a list of numbers reads as its maximum.
    ``error`` names the metric holding this one's standard error; ``leaderboard`` says whether the leaderboard
    shows it as a column when some row has it.
    """

    key: str
    title: str
    source: str
    paths: tuple[str, ...]
    direction: str = "higher"
    definition: str = ""
    unit: str = ""
    fmt: str = ".4g"
    scale: float = 1.0
    reduce: str | None = None
    error: str | None = None
    leaderboard: bool = True

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.key!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if not self.paths:
            raise ValueError(f"metric {self.key!r}: give at least one JSON path in paths")
        if self.reduce not in (None, "max"):
            raise ValueError(f"metric {self.key!r}: reduce must be None or 'max', got {self.reduce!r}")

    @property
    def path(self) -> str:
        """The canonical JSON path."""
        return self.paths[0]

    @property
    def group(self) -> str:
        """``aggregate`` for eval summary numbers, ``geometry`` for geometry diagnostics."""
        return "aggregate" if self.source == SUMMARY else "geometry"

    @property
    def heading(self) -> str:
        """The title with its unit, for a column header."""
        return f"{self.title} ({self.unit})" if self.unit else self.title

    def format(self, value: float | None, missing: str = "—") -> str:
        """``value`` as the tables show it (accuracies: percent with 2 decimals)."""
        return missing if value is None else format(value * self.scale, self.fmt)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "paths": list(self.paths)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Metric:
        """A metric from its ``to_json`` form; ValueError when a field is missing or malformed."""
        known = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or not {"key", "title", "source", "paths"} <= set(data):
            raise ValueError("a metric needs key, title, source and paths")
        kwargs = {k: v for k, v in data.items() if k in known}
        text = ("key", "title", "source", "direction", "definition", "unit", "fmt")
        if not all(isinstance(kwargs[k], str) for k in text if k in kwargs):
            raise ValueError(f"metric fields {', '.join(text)} must be strings")
        paths = kwargs["paths"]
        if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
            raise ValueError("metric paths must be a list of dotted JSON paths")
        kwargs["paths"] = tuple(paths)
        metric = cls(**kwargs)
        format(1.0 * metric.scale, metric.fmt)  # ValueError/TypeError on a bad format or scale
        return metric

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b`` under this metric's direction."""
        if self.direction == "none":
            return False
        return a > b if self.direction == "higher" else a < b

    def read_kinds(self, by_kind: Mapping[str, Any]) -> float | None:
        """This metric's value from the geometry records of one checkpoint, keyed by kind."""
        return self.read(by_kind.get(self.source))

    def read(self, record: Any) -> float | None:
        """This metric's value from one record: a summary (``SummaryRecord`` or its JSON dict) for aggregates,
        a ``GeometryRecord`` (or its JSON dict) of kind ``source`` for geometry; ``None`` when absent."""
        if record is None:
            return None
        find = getattr(record, "find", None)
        for path in self.paths:
            raw = find(path) if find is not None else _find(record, path, self.group)
            if self.reduce == "max" and isinstance(raw, (list, tuple)):
                nums = [v for v in (as_float(x) for x in raw) if v is not None]
                raw = max(nums) if nums else None
            value = as_float(raw)
            if value is not None:
                return value
        return None


GEOMETRY_CONTAINERS = ("", "metrics.", "report.", "result.")


def _find(data: Any, path: str, group: str) -> Any:
    data = getattr(data, "data", data)
    prefixes = GEOMETRY_CONTAINERS if group == "geometry" else ("",)
    for prefix in prefixes:
        value = lookup(data, prefix + path)
        if value is not None:
            return value
    return None


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric, *, replace: bool = False) -> Metric:
    """Add ``metric`` to the table (in order of registration). Registering the same definition twice is a no-op;
    another definition under a known key raises ValueError unless ``replace``."""
    old = METRICS.get(metric.key)
    if old is not None and old != metric and not replace:
        raise ValueError(f"metric {metric.key!r} is already registered with another definition; "
                         "pick another key or pass replace=True")
    METRICS[metric.key] = metric
    return metric


def declared_for(kind: str) -> list[dict[str, Any]]:
    """The declarations a geometry record of ``kind`` carries: its kind's metrics that are not built in."""
    return [m.to_json() for m in METRICS.values() if m.source == kind and m.key not in BUILTIN_KEYS]


def register_declared(entries: Any, where: str) -> None:
    """Register the metrics a record declares (``columns``) whose keys are not known yet; never replaces one."""
    if entries is None:
        return
    if not isinstance(entries, list):
        raise UserError(f"{where}: 'columns' is not a list; re-run the grace-bench geometry command")
    for entry in entries:
        try:
            metric = Metric.from_json(entry)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: a declared column is malformed ({exc}); re-run the grace-bench geometry "
                            "command") from None
        if metric.key not in METRICS:
            register_metric(metric)


def get_metric(key: str) -> Metric:
    """The metric registered under ``key``; KeyError naming the known keys otherwise."""
    try:
        return METRICS[key]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(METRICS)}") from None


def metrics(group: str | None = None, *, leaderboard: bool | None = None, errors: bool = True) -> list[Metric]:
    """Registered metrics in order; only one ``group`` (``aggregate``/``geometry``), only those with the given
    ``leaderboard`` flag, and without the metrics that are another's standard error unless ``errors``."""
    error_keys = {m.error for m in METRICS.values() if m.error}
    return [m for m in METRICS.values()
            if (group is None or m.group == group) and (leaderboard is None or m.leaderboard == leaderboard)
            and (errors or m.key not in error_keys)]


def titles() -> dict[str, str]:
    """key -> title of every registered metric."""
    return {m.key: m.title for m in METRICS.values()}


def _builtin() -> None:
    def agg(key: str, title: str, definition: str, **kw: Any) -> None:
        register_metric(Metric(key, title, SUMMARY, (f"aggregates.{key}",), "higher", definition, unit="%",
                               fmt=".2f", scale=100.0, **kw))

    agg("id", "ID", "top-1 accuracy on the ID dataset")
    agg("ood_avg", "OOD avg", "mean top-1 over the OOD datasets")
    agg("nat_adv", "Nat-adv", "mean top-1 over the natural-adversarial datasets")
    agg("autoattack", "Robust", "robust accuracy on the ID adversarial subset")
    agg("adv", "Adv", "mean(AutoAttack, Nat-adv)")
    agg("hm", "HM", "3 / (1/ID + 1/OOD avg + 1/Adv)")

    def geo(key: str, title: str, kind: str, paths: tuple[str, ...], direction: str, definition: str,
            **kw: Any) -> None:
        register_metric(Metric(key, title, kind, paths, direction, definition, **kw))

    geo("lambda_max", "λ_max", "hessian", ("lambda_max", "top_eigenvalues.eigenvalues", "top_eigenvalues"), "lower",
        "largest Hessian eigenvalue of the loss", unit="nats/w²", reduce="max")
    geo("trace", "trace", "hessian", ("trace.trace", "trace"), "lower",
        "Hessian trace (± standard error when given)", unit="nats/w²", error="trace_se")
    geo("trace_se", "trace s.e.", "hessian", ("trace.trace_se", "trace_se", "trace_std"), "none",
        "standard error of the Hessian trace estimate", unit="nats/w²", leaderboard=False)
    geo("weight_drift", "weight drift", "weights", ("overall.relative", "relative_drift", "weight_drift"), "none",
        "relative weight drift ‖θ−θ0‖/‖θ0‖ (whole state dict)", fmt=".3f")
    geo("cka_to_ref", "CKA to θ0", "features", ("cka_to_ref", "cka.linear", "cka"), "higher",
        "CKA between this checkpoint's and the reference's features", fmt=".3f")
    geo("centroid_id_ood", "centroid cos ID→OOD", "features", ("centroid_cosine.id_to_ood_mean",), "higher",
        "mean cosine of class centroids, ID vs each OOD dataset", leaderboard=False)
    geo("centroid_id_adv", "centroid cos ID→Adv", "features", ("centroid_cosine.id_to_adv.mean",), "higher",
        "mean cosine of class centroids, ID vs its PGD images", leaderboard=False)
    geo("delta_lid_ood", "ΔLID OOD", "features", ("lid.delta_ood_mean",), "none",
        "local intrinsic dimension of OOD minus ID embeddings (mean over OOD datasets)", unit="dims",
        leaderboard=False)
    geo("delta_lid_adv", "ΔLID Adv", "features", ("lid.delta_adv",), "none",
        "local intrinsic dimension of PGD minus clean ID embeddings", unit="dims", leaderboard=False)


_builtin()
BUILTIN_KEYS = frozenset(METRICS)
