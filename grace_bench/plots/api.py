"""``grace_bench.plots.draw(kind, records, out) -> list[Path]``: read result records and draw one family of figures.

KIND       reads                                           writes (under ``out``)
landscape  geometry-landscape-*.json (+ .npz)              landscape-1d, landscape-interp, landscape-2d, landscape-3d-*
spectrum   geometry-hessian-*.json (+ .npz density)         spectrum
curvature  geometry-hessian-*.json (per_layer_curvature)   curvature
cka        geometry-features-*.json (+ .npz cka_layers)    cka-layers-<label>, cka-methods
tradeoff   summary-*.json                                  tradeoff (+ tradeoff-radar with radar=True)
wise       summary-*.json (those with a WiSE-FT alpha)     wise
training   runs/NAME/log.jsonl (or run directories)        training
metrics    geometry-*.json (any kind)                      metric-<key> for every geometry metric of the table
sensitivity *tuning.json (compare --tune)                   sensitivity-<row> for every row with knobs of its own

``records`` holds result files or directories (searched recursively), and/or records already loaded
(``results.SummaryRecord`` / ``results.GeometryRecord``). A new figure family registers its drawer with
``register_kind(kind, drawer)``. Matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grace_bench.errors import UserError
from grace_bench.results.metrics import get_metric
from grace_bench.results.records import (
    GeometryRecord,
    SummaryRecord,
    find_files,
    labels_by_fingerprint,
    load_geometry,
    load_summaries,
    read_json,
)
from grace_bench.results.values import as_float, lookup

FORMATS = ("png", "pdf")
Drawer = Callable[["DrawRequest", Path], list[Path]]
DRAWERS: dict[str, Drawer] = {}


@dataclass
class DrawRequest:
    """What a drawer gets: the inputs (paths and loaded records) and the figure options."""

    paths: list[Path]
    records: list[SummaryRecord | GeometryRecord]
    formats: tuple[str, ...] = FORMATS
    surface: bool = False
    radar: bool = False
    vmax: float | None = None
    log: Callable[[str], None] = field(default=print)

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths) or "the given records"

    def written(self, stem: Path) -> list[Path]:
        """The files a figure saved at ``stem`` was written to, one per format."""
        return [stem.with_name(f"{stem.name}.{fmt}") for fmt in self.formats]

    def summaries(self, *, required: bool = True) -> list[SummaryRecord]:
        """Summaries given as records plus those found under the paths."""
        found = [r for r in self.records if isinstance(r, SummaryRecord)]
        if self.paths:
            found += load_summaries(self.paths, required=required and not found)
        if required and not found:
            raise UserError("no eval summary given; pass summary-*.json files or the --out folder of grace-bench eval")
        return found

    def geometry(self, kind: str) -> tuple[list[GeometryRecord], dict[str, str]]:
        """Geometry records of ``kind`` (given plus found), and the summaries' labels by fingerprint."""
        records = [r for r in self.records if isinstance(r, GeometryRecord) and r.kind == kind]
        if self.paths:
            records += load_geometry(self.paths, kind)
        if not records:
            raise UserError(f"no geometry-{kind}-*.json among {self.describe()}; "
                            f"run `grace-bench geometry {kind} CKPT` first")
        return records, labels_by_fingerprint(self.summaries(required=False))

    def all_geometry(self) -> tuple[list[GeometryRecord], dict[str, str]]:
        """Geometry records of every kind (given plus found), and the summaries' labels by fingerprint."""
        records = [r for r in self.records if isinstance(r, GeometryRecord)]
        if self.paths:
            records += load_geometry(self.paths)
        if not records:
            raise UserError(f"no geometry-*.json among {self.describe()}; run `grace-bench geometry KIND CKPT` first")
        return records, labels_by_fingerprint(self.summaries(required=False))


def register_kind(kind: str, drawer: Drawer) -> None:
    """Make ``draw(kind, ...)`` call ``drawer(request, out_dir)``, which returns the files it wrote."""
    DRAWERS[kind] = drawer


def kinds() -> tuple[str, ...]:
    return tuple(DRAWERS)


def draw(
    kind: str,
    records: Iterable[str | os.PathLike | SummaryRecord | GeometryRecord] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    formats: Sequence[str] | None = None,
    surface: bool = False,
    radar: bool = False,
    vmax: float | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Draw the figures of ``kind`` from ``records`` into the folder ``out``; returns the files written.

    ``formats``: file formats (default png and pdf); ``surface``: landscape 3D surfaces of 2D grids; ``radar``:
    trade-off radar chart; ``vmax``: cap of the landscape loss colour scale; ``log``: where notes go.
    """
    if kind not in DRAWERS:
        raise UserError(f"unknown plot kind '{kind}'; choose one of: {', '.join(DRAWERS)}")
    items = [records] if isinstance(records, (str, os.PathLike)) else list(records)
    paths = [Path(r) for r in items if isinstance(r, (str, os.PathLike))]
    loaded = [r for r in items if isinstance(r, (SummaryRecord, GeometryRecord))]
    if len(paths) + len(loaded) != len(items):
        bad = next(r for r in items if not isinstance(r, (str, os.PathLike, SummaryRecord, GeometryRecord)))
        raise TypeError(f"draw: records must be paths or result records, not {type(bad).__name__}")
    fmts = tuple(formats or FORMATS)
    bad_fmt = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad_fmt:
        raise UserError(f"unknown figure format '{bad_fmt[0]}'; use png, pdf or svg (parameter formats)")
    req = DrawRequest(paths, loaded, fmts, surface, radar, vmax, log)
    return DRAWERS[kind](req, Path(out))


def slug(label: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_") or "unnamed"


def _unique_labels(records: list[GeometryRecord], labels: dict[str, str]) -> list[str]:
    names = [r.label(labels) for r in records]
    return [f"{n} ({r.fp12[:7]})" if names.count(n) > 1 else n for n, r in zip(names, records)]


# --- landscape ---------------------------------------------------------------------------------------------


def _landscape(req: DrawRequest, out: Path) -> list[Path]:
    from grace_bench.plots.landscape import plot_landscape_1d, plot_landscape_2d, plot_landscape_3d

    records, labels = req.geometry("landscape")
    # name within each figure: a 1D and a 2D result of the same checkpoint do not clash
    is_2d = [getattr(_landscape_loss(r), "ndim", 1) == 2 for r in records]
    names = [""] * len(records)
    for flag in (False, True):
        idx = [i for i, f in enumerate(is_2d) if f == flag]
        for i, name in zip(idx, _unique_labels([records[i] for i in idx], labels)):
            names[i] = name
    curves: dict[str, dict[str, dict]] = {"directions": {}, "interp": {}}
    protos: dict[str, list] = {"directions": [], "interp": [], "2d": []}
    surfaces: dict[str, dict] = {}
    for rec, name in zip(records, names):
        loss = _landscape_loss(rec)
        axes = _landscape_axes(rec, loss)
        if loss.ndim == 2:
            surfaces[name] = {"x": axes[0], "y": axes[1], "loss": loss}
            protos["2d"].append(rec.config)
        else:
            mode = str(rec.find("mode", "meta.kind", "config.kind", "config.mode") or "")
            group = "interp" if mode.startswith("interp") else "directions"
            curves[group][name] = {"alpha": axes[0], "loss": loss, "acc": rec.array("accuracy", "acc")}
            protos[group].append(rec.config)
    written: list[Path] = []
    if curves["directions"]:
        stem = out / "landscape-1d"
        plot_landscape_1d(curves["directions"], protocol=protos["directions"], out=stem, formats=req.formats)
        written += req.written(stem)
    if curves["interp"]:
        stem = out / "landscape-interp"
        plot_landscape_1d(curves["interp"], protocol=protos["interp"], out=stem, formats=req.formats,
                          title="Loss along the straight line θ0 → θ",
                          xlabel="interpolation coefficient α (0 = θ0, 1 = θ)")
        written += req.written(stem)
    if surfaces:
        stem = out / "landscape-2d"
        plot_landscape_2d(surfaces, protocol=protos["2d"], vmax=req.vmax, out=stem, formats=req.formats)
        written += req.written(stem)
        if req.surface:
            for (name, s), proto in zip(surfaces.items(), protos["2d"]):
                stem = out / f"landscape-3d-{slug(name)}"
                plot_landscape_3d(s["x"], s["y"], s["loss"], label=name, protocol=proto, vmax=req.vmax,
                                  out=stem, formats=req.formats)
                written += req.written(stem)
    return written


def _landscape_loss(rec: GeometryRecord) -> np.ndarray:
    loss = rec.array("loss")
    if loss is None or loss.ndim not in (1, 2):
        raise UserError(f"{rec.path} holds no 1D or 2D 'loss' grid; re-run grace-bench geometry landscape")
    return loss


def _landscape_axes(rec: GeometryRecord, loss: np.ndarray) -> list[np.ndarray]:
    """Grid coordinates: NPZ ``axis_0``/``axis_1`` (aliases ``alphas``, ``xs``/``ys``), else JSON ``axes``."""
    names = (("axis_0", "axes_0", "alphas", "alpha", "xs", "x"), ("axis_1", "axes_1", "ys", "y"))
    axes = [rec.array(*names[i]) for i in range(loss.ndim)]
    if any(a is None for a in axes):
        listed = rec.find("axes", "meta.axes", "config.axes")
        if isinstance(listed, list) and len(listed) == loss.ndim:
            axes = [np.asarray(a, dtype=float) for a in listed]
    if any(a is None for a in axes) or tuple(a.size for a in axes) != loss.shape:
        raise UserError(f"{rec.path}: grid coordinates missing or not matching loss shape {loss.shape}; "
                        "re-run grace-bench geometry landscape")
    return [np.asarray(a, dtype=float).ravel() for a in axes]


# --- Hessian ---------------------------------------------------------------------------------------------


def _spectrum(req: DrawRequest, out: Path) -> list[Path]:
    from grace_bench.plots.hessian import plot_spectral_density

    records, labels = req.geometry("hessian")
    densities, protos = {}, []
    for rec, name in zip(records, _unique_labels(records, labels)):
        grid, dens = rec.array("density_grid", "grid"), rec.array("density_density", "density")
        if grid is None or dens is None:
            continue
        densities[name] = {"grid": grid, "density": dens, "lambda_max": get_metric("lambda_max").read(rec)}
        protos.append(rec.config)
    if not densities:
        raise UserError("none of the hessian results holds a spectral density ('density_grid' and 'density'); "
                        "run `grace-bench geometry hessian` with the density enabled")
    stem = out / "spectrum"
    plot_spectral_density(densities, protocol=protos, out=stem, formats=req.formats)
    return req.written(stem)


def _natural_key(name: str) -> list:
    """Sort key that orders the numbers inside a name numerically (``resblocks.2`` before ``resblocks.10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def network_order(names: list[str], recorded: Any) -> list[str]:
    """``names`` in the network order of the recorded ``layer_names`` (JSON objects come back sorted by key);
    names it lacks follow, and without a record the numbers inside names are sorted numerically."""
    listed = [str(n) for n in recorded] if isinstance(recorded, list) else []
    known = [n for n in dict.fromkeys(listed) if n in names]
    return known + sorted((n for n in names if n not in known), key=_natural_key)


def _layer_curvature(rec: GeometryRecord) -> dict[str, float] | None:
    """``{layer: kappa}`` in network order, from ``per_layer_curvature`` ({layer: value}) or Hutchinson's
    ``trace.layers`` ({layer: {"kappa": value, ...}}), ordered by the recorded ``layer_names``."""
    value = rec.find("per_layer_curvature", "trace.layers")
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            f = as_float(v.get("kappa")) if isinstance(v, dict) else as_float(v)
            if f is not None:
                out[str(k)] = f
        if out:
            return {name: out[name] for name in network_order(list(out), rec.find("layer_names"))}
    values = rec.array("per_layer_curvature")
    names = rec.data.get("layer_names")
    if values is not None and isinstance(names, list) and len(names) == values.size:
        return {str(n): float(v) for n, v in zip(names, values.ravel())}
    return None


def _curvature(req: DrawRequest, out: Path) -> list[Path]:
    from grace_bench.plots.curvature import plot_layer_curvature

    records, labels = req.geometry("hessian")
    curv, protos = {}, []
    for rec, name in zip(records, _unique_labels(records, labels)):
        per_layer = _layer_curvature(rec)
        if per_layer:
            curv[name] = per_layer
            protos.append(rec.config)
    if not curv:
        raise UserError("none of the hessian results holds 'per_layer_curvature'; "
                        "run `grace-bench geometry hessian` with per-layer curvature")
    stem = out / "curvature"
    plot_layer_curvature(curv, protocol=protos, out=stem, formats=req.formats)
    return req.written(stem)


# --- CKA -------------------------------------------------------------------------------------------------


def _ref_identity(rec: GeometryRecord, labels: dict[str, str]) -> str | None:
    ref = rec.data.get("ref") or rec.config.get("ref")
    if isinstance(ref, str):
        return labels.get(ref[:12], ref)
    if isinstance(ref, dict):
        fp = str(ref.get("fingerprint") or "")[:12]
        return ref.get("label") or labels.get(fp) or ref.get("spec") or fp or None
    return None


def _cka(req: DrawRequest, out: Path) -> list[Path]:
    from grace_bench.plots.cka import plot_cka_layers, plot_cka_methods

    records, labels = req.geometry("features")
    written: list[Path] = []
    pairs: dict[tuple[str, str], float] = {}
    protos = []
    for rec, name in zip(records, _unique_labels(records, labels)):
        ref = _ref_identity(rec, labels) or "reference"
        measure = str(rec.config.get("cka") or rec.data.get("cka_kind") or "CKA")
        matrix = rec.array("cka_layers", "layerwise_cka", "cka_matrix")
        if matrix is not None and matrix.ndim == 2:
            rows = rec.find("layer_names") or [str(i) for i in range(matrix.shape[0])]
            cols = rec.find("ref_layer_names") or (rows if matrix.shape[0] == matrix.shape[1] else
                                                   [str(i) for i in range(matrix.shape[1])])
            if (len(rows), len(cols)) != matrix.shape:
                raise UserError(f"{rec.path}: layer names do not match the CKA matrix {matrix.shape}; re-run it")
            stem = out / f"cka-layers-{slug(name)}"
            # cka_kind describes cka_to_ref ("..., final embedding"); every cell here is a pair of layers
            plot_cka_layers(matrix, rows, cols, label=name, ref_label=ref, protocol=rec.config,
                            measure=measure.removesuffix(", final embedding"), out=stem, formats=req.formats)
            written += req.written(stem)
        value = get_metric("cka_to_ref").read(rec)
        if value is not None:
            pairs[(name, ref)] = value
            protos.append(rec.config)
    if pairs:
        order = list(dict.fromkeys([b for _, b in pairs] + [a for a, _ in pairs]))
        m = np.full((len(order), len(order)), np.nan)
        np.fill_diagonal(m, 1.0)
        for (a, b), v in pairs.items():
            i, j = order.index(a), order.index(b)
            m[i, j] = m[j, i] = v
        stem = out / "cka-methods"
        plot_cka_methods(m, order, protocol=protos, out=stem, formats=req.formats)
        written += req.written(stem)
    if not written:
        raise UserError("the features results hold neither 'cka_layers' arrays nor 'cka_to_ref'; "
                        "run `grace-bench geometry features CKPT --ref CKPT`")
    return written


# --- summaries -------------------------------------------------------------------------------------------


def _protocol_with_attack(summary: SummaryRecord) -> dict[str, Any]:
    """The summary's protocol plus ``attack_label``: the attack as its results recorded it (APGD-CE 1×100)."""
    from grace_bench.attacks.naming import describe_attack, summary_attack_entries

    labels = []
    for entry in summary_attack_entries(summary.data):
        label = describe_attack(entry, short=True)
        if label not in labels:
            labels.append(label)
    return {**summary.protocol, **({"attack_label": " | ".join(labels)} if labels else {})}


def _unique_summary_labels(summaries: list[SummaryRecord]) -> list[str]:
    names = [s.label for s in summaries]
    return [f"{n} ({s.fp12[:7]})" if names.count(n) > 1 else n for n, s in zip(names, summaries)]


def _tradeoff(req: DrawRequest, out: Path) -> list[Path]:
    from grace_bench.plots.tradeoff import plot_radar, plot_tradeoff

    summaries = req.summaries()
    points, full, protos, skipped = {}, {}, [], []
    for s, name in zip(summaries, _unique_summary_labels(summaries)):
        agg = {k: as_float(v) for k, v in s.aggregates.items()}
        full[name] = agg
        if None in (agg.get("id"), agg.get("ood_avg"), agg.get("adv")):
            skipped.append(name)
            continue
        points[name] = {"id": agg["id"], "ood": agg["ood_avg"], "adv": agg["adv"]}
        protos.append(_protocol_with_attack(s))
    if not points:
        raise UserError("no summary has all of ID, OOD avg and Adv; run `grace-bench eval` with an attack")
    if skipped:
        req.log(f"note: skipped (no ID/OOD/Adv aggregates): {', '.join(skipped)}")
    stem = out / "tradeoff"
    plot_tradeoff(points, protocol=protos, out=stem, formats=req.formats)
    written = req.written(stem)
    if req.radar:
        stem = out / "tradeoff-radar"
        plot_radar({k: full[k] for k in points}, protocol=protos, out=stem, formats=req.formats)
        written += req.written(stem)
    return written


def summary_alpha(summary: SummaryRecord) -> float | None:
    """The WiSE-FT mixing coefficient of an interpolated checkpoint (``alpha`` at top level or in checkpoint)."""
    for key in ("alpha", "checkpoint.alpha", "checkpoint.wise_alpha"):
        value = as_float(lookup(summary.data, key))
        if value is not None:
            return value
    return None


def _wise(req: DrawRequest, out: Path) -> list[Path]:
    from grace_bench.plots.wise_curve import plot_wise_curve

    summaries = req.summaries()
    curve: dict[float, dict[str, Any]] = {}
    refs, protos = {}, []
    for s, name in zip(summaries, _unique_summary_labels(summaries)):
        agg = s.aggregates
        alpha = summary_alpha(s)
        if alpha is None:
            refs[name] = {"id": as_float(agg.get("id")), "ood": as_float(agg.get("ood_avg"))}
            continue
        if as_float(agg.get("id")) is None or as_float(agg.get("ood_avg")) is None:
            raise UserError(f"{s.path} (alpha={alpha:g}) lacks ID or OOD avg aggregates; re-run grace-bench eval on it")
        if alpha in curve:
            raise UserError(f"two summaries have WiSE-FT alpha={alpha:g} ({curve[alpha]['path']}, {s.path}); pass one")
        curve[alpha] = {"id": as_float(agg["id"]), "ood": as_float(agg["ood_avg"]), "adv": as_float(agg.get("adv")),
                        "path": s.path}
        protos.append(_protocol_with_attack(s))
    if len(curve) < 2:
        raise UserError("need summaries of at least two WiSE-FT checkpoints (with 'alpha'); "
                        "run `grace-bench wise ZS FT --alpha 0:1:0.1` and evaluate them")
    alphas = sorted(curve)
    stem = out / "wise"
    plot_wise_curve(alphas, [curve[a]["id"] for a in alphas], [curve[a]["ood"] for a in alphas],
                    adv=[curve[a]["adv"] for a in alphas], references=refs, protocol=protos,
                    out=stem, formats=req.formats)
    return req.written(stem)


# --- training --------------------------------------------------------------------------------------------


def _training(req: DrawRequest, out: Path) -> list[Path]:
    from grace_bench.plots.training import plot_training_curves, read_log_jsonl

    logs = [p for p in find_files(req.paths, "log.jsonl") if p.suffix == ".jsonl"] if req.paths else []
    if not logs:
        raise UserError(f"no log.jsonl among {req.describe()}; pass run directories of grace-bench finetune")
    runs, protos = {}, []
    for log in logs:
        name = log.parent.name if log.name == "log.jsonl" else log.stem
        if name in runs:
            name = f"{name} ({log.parent})"
        runs[name] = read_log_jsonl(log)
        cfg = log.parent / "config.json"
        if cfg.is_file():
            protos.append(read_json(cfg))
    stem = out / "training"
    plot_training_curves(runs, protocol=protos or None, out=stem, formats=req.formats)
    return req.written(stem)


# --- any geometry metric ---------------------------------------------------------------------------------


def _metrics(req: DrawRequest, out: Path) -> list[Path]:
    """One bar chart per geometry metric of the table that some record holds (a new diagnostic's figure)."""
    from grace_bench.plots.metric_bars import plot_metric_bars
    from grace_bench.results.metrics import metrics

    records, labels = req.all_geometry()
    written: list[Path] = []
    for metric in metrics("geometry", errors=False):
        mine = [r for r in records if r.kind == metric.source]
        named = list(zip(mine, _unique_labels(mine, labels)))
        values = {name: v for r, name in named if (v := metric.read(r)) is not None}
        if not values:
            continue
        error = get_metric(metric.error) if metric.error else None
        errors = {name: error.read(r) for r, name in named if name in values} if error else None
        stem = out / f"metric-{slug(metric.key)}"
        plot_metric_bars(values, metric_title=metric.heading, errors=errors, direction=metric.direction,
                         protocol=[r.config for r, name in named if name in values], title=metric.definition or None,
                         out=stem, formats=req.formats)
        written += req.written(stem)
    if not written:
        raise UserError("the geometry results hold none of the metrics of the table; re-run grace-bench geometry")
    return written


# --- tuning sensitivity ----------------------------------------------------------------------------------


def _sensitivity(req: DrawRequest, out: Path) -> list[Path]:
    """Per tuned row with knobs of its own: val HM, robust and clean top-1 against each knob (tuning trials)."""
    from grace_bench.plots.sensitivity import plot_sensitivity

    files = find_files(req.paths, "*tuning.json") if req.paths else []
    written: list[Path] = []
    for path in files:
        data = read_json(path)
        if not str(data.get("schema", "")).startswith("grace-bench/tuning/"):
            raise UserError(f"{path} is not a tuning file of `grace-bench compare --tune`; pass WORK/tuning.json")
        spaces, trials = data.get("spaces") or {}, data.get("trials") or {}
        if not isinstance(spaces, dict) or not isinstance(trials, dict):
            raise UserError(f"{path}: 'spaces' and 'trials' must be objects; rerun `grace-bench compare --tune`")
        for label, space in spaces.items():
            knobs = [k["name"] for k in space if k.get("name") != "lr"]
            if not knobs or not trials.get(label):
                continue
            log = [k["name"] for k in space if k.get("log") and not k.get("choices")]
            chosen = (data.get("selected") or {}).get(label) or {}
            budget = data.get("budget") or {}
            sub = (f"validation split ({trials[label][0].get('n', '?')} images), training seed {data.get('seed')}, "
                   f"{budget.get('steps')} steps each")
            stem = out / f"sensitivity-{slug(label)}"
            plot_sensitivity(trials[label], [*knobs, "lr"], label=label, log_knobs=log, selected=chosen.get("trial"),
                             subtitle=sub, out=stem, formats=req.formats)
            written += req.written(stem)
    if not written:
        raise UserError(f"no tuning trials with method knobs among {req.describe()}; run `grace-bench compare --tune` "
                        "and pass WORK/tuning.json")
    return written


for _kind, _drawer in (("landscape", _landscape), ("spectrum", _spectrum), ("curvature", _curvature), ("cka", _cka),
                       ("tradeoff", _tradeoff), ("wise", _wise), ("training", _training),
                       ("metrics", _metrics), ("sensitivity", _sensitivity)):
    register_kind(_kind, _drawer)
