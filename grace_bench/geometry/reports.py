"""Reports assembled from estimator outputs: the standard Hessian set and the record fields built from it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from grace_bench.geometry.estimators import (
    hutch_plus_plus,
    hutchinson,
    power_iteration,
    run_lanczos,
    spectral_density,
)
from grace_bench.geometry.lanczos import Criterion, LanczosRun
from grace_bench.geometry.operators import CurvatureOperator, operator_slices


def hessian_report(
    op: CurvatureOperator,
    *,
    top_k: int = 5,
    lanczos_iter: int = 100,
    tol: float = 1e-3,
    criterion: Criterion = "estimate",
    trace_samples: int = 100,
    hutchpp_matvecs: int = 0,
    slq_runs: int = 4,
    slq_iter: int = 64,
    power: bool = False,
    granularity: str = "block",
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Run the standard set (Lanczos top-k, Hutchinson + layers, optional Hutch++/power, SLQ); dict + arrays.

    One Lanczos run from a Rademacher vector serves three estimators: it gives the top-k eigenvalues,
    is the first SLQ run (it runs at least ``slq_iter`` steps when ``slq_runs > 0``) and deflates the
    Hutchinson trace and layer curvatures. Every other SLQ run and Hutchinson sample costs its own HVPs.
    """
    report: dict = {"dim": op.dim, "num_samples": getattr(op, "num_samples", None),
                    "num_batches": len(getattr(op, "batches", ())), "params": len(operator_slices(op)), "seed": seed}
    arrays: dict[str, np.ndarray] = {}
    steps = [("lanczos", True), ("power", power), ("hutchinson", trace_samples > 0),
             ("hutch++", hutchpp_matvecs > 0), ("density", slq_runs > 0)]
    run: LanczosRun | None = None
    for name, enabled in tqdm(steps, desc="hessian", disable=not progress, unit="step"):
        if not enabled:
            continue
        if on_step:
            on_step(name)
        if name == "lanczos":
            report["top_eigenvalues"], run = run_lanczos(
                op, top_k, max_iter=lanczos_iter, tol=tol, criterion=criterion, seed=seed, start="rademacher",
                min_iter=slq_iter if slq_runs > 0 else 0, progress=progress)
        elif name == "power":
            report["power_iteration"] = power_iteration(op, top_k, tol=tol, seed=seed, progress=progress)
        elif name == "hutchinson":
            hut = hutchinson(op, trace_samples, seed=seed + 1, granularity=granularity, deflate=run,
                             progress=progress)
            arrays["hutchinson_samples"] = np.asarray(hut.pop("samples"))
            report["trace"] = hut
        elif name == "hutch++":
            report["trace_hutchpp"] = hutch_plus_plus(op, hutchpp_matvecs, seed=seed + 2, progress=progress)
        else:
            summary, dens = spectral_density(op, num_runs=slq_runs, num_iter=slq_iter, seed=seed + 3, shared=run,
                                             progress=progress)
            report["density"] = summary
            arrays.update({f"density_{k}": v for k, v in dens.items()})
    report["num_hvp_total"] = op.num_hvp
    return report, arrays


def hessian_fields(report: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The headline fields of a geometry-hessian record (``lambda_max``, per-layer curvature); adds arrays."""
    top = report["top_eigenvalues"]
    fields = {"lambda_max": top["eigenvalues"][0], **report}
    arrays["eigenvalues"] = np.asarray(top["eigenvalues"])
    layers = (report.get("trace") or {}).get("layers") or {}
    if layers:
        fields["per_layer_curvature"] = {k: v["kappa"] for k, v in layers.items()}
        fields["layer_names"] = list(layers)
        arrays["per_layer_curvature"] = np.asarray([v["kappa"] for v in layers.values()])
        arrays["per_layer_curvature_se"] = np.asarray([v["kappa_se"] for v in layers.values()])
    return fields
