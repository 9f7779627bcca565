"""Our Hessian estimators against both peers: PyHessian 0.1 (power iteration) and curvlinops 3.0 (ARPACK).

Same model (micro-clip architecture, random weights, vision tower), same fixed batch, same tolerance,
1 CPU thread. Each row prints the median wall time over ``--repeats`` interleaved repeats, the number
of HVPs, the value, the time ratio ours/peer and the agreement:
- top-1 / top-5 eigenvalues (largest magnitude, tol 1e-3): ours = Lanczos with full reorthogonalisation;
  curvlinops = ``HessianLinearOperator.to_scipy()`` + ``scipy.sparse.linalg.eigsh``; PyHessian = power
  iteration with deflation. Agreement = max relative difference of the k values; "err" = error against
  a tightly converged Lanczos reference.
- trace with the same number of HVPs: ours ``hutch_plus_plus`` vs curvlinops ``hutchpp_trace`` vs
  PyHessian's Hutchinson ``trace``. Agreement = |difference of the means over repeats| / its standard
  error, and per run |difference| / our per-run standard error.
- SLQ density (same number of Lanczos steps and runs): ours ``spectral_density`` vs curvlinops
  ``lanczos_approximate_spectrum`` (which first estimates the spectral boundaries with ``eigsh``).
  Agreement = relative difference of the density's mean eigenvalue (its trace estimate) and of its upper edge.
Each timing covers the whole job, from building the operator (our gradient graph; curvlinops' operator
with ``check_deterministic=False``, whose default probe would add two gradients and two HVPs) to the answer.

``--part profile`` splits the time into graph build, per-HVP cost and solver overhead for each library.
``--part cka`` / ``gpu``: CKA memory and ViT-B/32 timings, as in the former ``hessian_vs_pyhessian.py``.

    python benchmarks/hessian_vs_peers.py --part top --repeats 3      # CPU: about two minutes
    python benchmarks/hessian_vs_peers.py --part trace --repeats 3
    python benchmarks/hessian_vs_peers.py --part density --repeats 3
    python benchmarks/hessian_vs_peers.py --part profile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- adapter: our Hessian API (the only lines to re-point after the geometry refactor) ---------------
from grace_bench.geometry.hessian import build_operator, hutch_plus_plus, lanczos_eigenvalues, spectral_density
from grace_bench.geometry.losses import math_sdpa, select_params

PARAM_GROUP = "vision"
# -----------------------------------------------------------------------------------------------------


def build_classifier(arch: str, device: str, num_classes: int = 10, seed: int = 0):
    """A zero-shot-style classifier around a random-weight OpenCLIP ``arch`` with a random unit head."""
    from grace_bench.models.loading import build_clip_model
    from grace_bench.models.zero_shot import ZeroShotClassifier

    torch.manual_seed(seed)
    clip = build_clip_model(arch)
    head = F.normalize(torch.randn(clip.model.visual.output_dim, num_classes), dim=0)
    clf = ZeroShotClassifier(clip.model, head, clip.mean, clip.std).to(device).eval()
    for name, p in clf.named_parameters():  # PyHessian differentiates every trainable parameter
        p.requires_grad_(name.startswith("model.visual."))
    return clf, clip.image_size


def fixed_batch(n: int, image_size: int, num_classes: int, device: str, seed: int = 0):
    """Micro test images when they fit the model, else seeded uniform noise; labels in [0, num_classes)."""
    g = torch.Generator().manual_seed(seed)
    try:
        from grace_bench.data.micro import micro_dataset

        ds = micro_dataset("micro", "test")
        x, y = ds.tensors[0][:n], ds.tensors[1][:n]
        if x.shape[-1] != image_size:
            raise ValueError
    except Exception:  # noqa: BLE001 - any failure falls back to noise of the right size
        x = torch.rand(n, 3, image_size, image_size, generator=g)
        y = torch.randint(0, num_classes, (n,), generator=g)
    return x.to(device), y.to(device)


def _sync(device: torch.device | str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], dict], device) -> dict:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    out["time"] = time.perf_counter() - t0
    return out


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def by_magnitude(values) -> list[float]:
    return sorted((float(v) for v in values), key=abs, reverse=True)


# --- ours -------------------------------------------------------------------------------------------


def our_operator(clf, batch):
    return build_operator(clf, batch, select_params(clf, PARAM_GROUP))


def ours_top(clf, batch, k: int, tol: float, seed: int) -> dict:
    res = lanczos_eigenvalues(our_operator(clf, batch), k, max_iter=100, tol=tol, which="LM", seed=seed)
    return {"values": by_magnitude(res["eigenvalues"]), "hvp": res["num_hvp"]}


def ours_trace(clf, batch, matvecs: int, seed: int) -> dict:
    res = hutch_plus_plus(our_operator(clf, batch), matvecs, seed=seed)
    return {"value": res["trace"], "se": res["trace_se"], "hvp": res["num_hvp"]}


def ours_density(clf, batch, runs: int, steps: int, seed: int) -> dict:
    op = our_operator(clf, batch)
    summary, arrays = spectral_density(op, num_runs=runs, num_iter=steps, seed=seed)
    return {"mean": summary["trace_slq"] / op.dim, "top": summary["lambda_max_ritz"],
            "bottom": summary["lambda_min_ritz"], "hvp": summary["num_hvp"], "grid": arrays["grid"],
            "density": arrays["density"]}


# --- curvlinops -------------------------------------------------------------------------------------


def curvlinops_operator(clf, batch):
    """curvlinops' Hessian of the mean CE w.r.t. the same parameters; ``.hvp`` counts HVPs (matrix columns)."""
    from curvlinops import HessianLinearOperator

    params = [p for _, p in select_params(clf, PARAM_GROUP)]
    op = HessianLinearOperator(clf, nn.CrossEntropyLoss(), params, [batch], check_deterministic=False)
    op.hvp = 0
    per_batch = op._matmat_batch

    def counted(x, y, m):
        op.hvp += m[0].shape[-1]
        return per_batch(x, y, m)

    op._matmat_batch = counted
    return op


def curvlinops_top(clf, batch, k: int, tol: float, seed: int) -> dict:
    from scipy.sparse.linalg import eigsh

    with math_sdpa():
        op = curvlinops_operator(clf, batch)
        v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
        values = eigsh(op.to_scipy(), k=k, which="LM", tol=tol, v0=v0, return_eigenvectors=False)
    return {"values": by_magnitude(values), "hvp": op.hvp}


def curvlinops_trace(clf, batch, matvecs: int, seed: int) -> dict:
    from curvlinops import hutchpp_trace

    torch.manual_seed(seed)
    with math_sdpa():
        op = curvlinops_operator(clf, batch)
        value = float(hutchpp_trace(op, matvecs))
    return {"value": value, "hvp": op.hvp}


def curvlinops_density(clf, batch, runs: int, steps: int, seed: int, boundaries=None) -> dict:
    """curvlinops' SLQ; without ``boundaries`` it first finds the spectral edges with ``eigsh`` (tol 1e-2)."""
    from curvlinops import lanczos_approximate_spectrum

    torch.manual_seed(seed)
    with math_sdpa():
        op = curvlinops_operator(clf, batch)
        grid, density = lanczos_approximate_spectrum(op, steps, num_repeats=runs, boundaries=boundaries)
    grid, density = grid.double().numpy(), density.double().numpy()
    mass = np.trapezoid(density, grid)
    mean = float(np.trapezoid(grid * density, grid) / mass)
    return {"mean": mean, "top": None, "hvp": op.hvp, "grid": grid, "density": density}


# --- PyHessian --------------------------------------------------------------------------------------


@contextlib.contextmanager
def pyhessian_session(clf, batch, seed: int) -> Iterator[tuple[object, dict]]:
    """A PyHessian ``hessian`` object (graph built) and an HVP counter; cleans up ``.grad`` afterwards."""
    from pyhessian import hessian

    ph_mod = sys.modules["pyhessian.hessian"]  # the package re-exports the class under the module's name
    real = ph_mod.hessian_vector_product
    counter = {"n": 0}

    def counted(gradsH, params, v):
        counter["n"] += 1
        return real(gradsH, params, v)

    torch.manual_seed(seed)
    ph_mod.hessian_vector_product = counted
    try:
        with math_sdpa():
            yield hessian(clf, nn.CrossEntropyLoss(), data=batch, cuda=str(batch[0].device).startswith("cuda")), counter
    finally:
        ph_mod.hessian_vector_product = real
        for p in clf.parameters():
            p.grad = None  # PyHessian leaves graph-carrying .grad fields behind


def pyhessian_top(clf, batch, k: int, tol: float, seed: int) -> dict:
    with pyhessian_session(clf, batch, seed) as (h, counter):
        values, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=k)
    return {"values": by_magnitude(values), "hvp": counter["n"]}


def pyhessian_trace(clf, batch, matvecs: int, seed: int) -> dict:
    with pyhessian_session(clf, batch, seed) as (h, counter):
        samples = np.asarray(h.trace(maxIter=matvecs, tol=-math.inf))  # exactly ``matvecs`` samples
    return {"value": float(samples.mean()), "se": float(samples.std(ddof=1) / math.sqrt(samples.size)),
            "hvp": counter["n"]}


# --- comparisons ------------------------------------------------------------------------------------


def _repeat(jobs: dict[str, Callable[[int], dict]], repeats: int, seed: int, device) -> dict[str, list[dict]]:
    """Run every job once per repeat, interleaved (so load changes hit all alike), seed ``seed + repeat``."""
    out: dict[str, list[dict]] = {name: [] for name in jobs}
    for r in range(repeats):
        for name, job in jobs.items():
            out[name].append(_timed(lambda job=job, s=seed + r: job(s), device))
    return out


def _median(runs: list[dict], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def _spread(runs: list[dict], key: str = "time") -> str:
    values = [run[key] for run in runs]
    return f"{min(values):.2f}-{max(values):.2f}"


def compare_top(clf, batch, tol: float, seed: int, repeats: int, device) -> list[dict]:
    op = our_operator(clf, batch)
    ref = lanczos_eigenvalues(op, 5, max_iter=300, tol=1e-8, which="LM", seed=seed + 100, criterion="residual")
    truth = by_magnitude(ref["eigenvalues"])
    print(f"parameters: {op.dim:,} ({PARAM_GROUP}); batch {batch[0].shape[0]}; tol {tol:g}; {repeats} repeats")
    print(f"reference (Lanczos, relative residual <= 1e-8, {ref['num_hvp']} HVPs): "
          + ", ".join(f"{v:.6g}" for v in truth))
    del op
    rows = []
    for k in (1, 5):
        runs = _repeat({
            "ours": lambda s, k=k: ours_top(clf, batch, k, tol, s),
            "curvlinops": lambda s, k=k: curvlinops_top(clf, batch, k, tol, s),
            "PyHessian": lambda s, k=k: pyhessian_top(clf, batch, k, tol, s),
        }, repeats, seed, device)
        ours_t = _median(runs["ours"], "time")
        for peer in ("curvlinops", "PyHessian"):
            agree = [max(rel(a, b) for a, b in zip(o["values"], p["values"])) for o, p in zip(runs["ours"], runs[peer])]
            rows.append({
                "row": f"top-{k}", "peer": peer, "ours_s": ours_t, "peer_s": _median(runs[peer], "time"),
                "ours_spread": _spread(runs["ours"]), "peer_spread": _spread(runs[peer]),
                "ours_hvp": _median(runs["ours"], "hvp"), "peer_hvp": _median(runs[peer], "hvp"),
                "ours_hvps": [o["hvp"] for o in runs["ours"]], "peer_hvps": [p["hvp"] for p in runs[peer]],
                "value": runs["ours"][0]["values"][0], "agreement": max(agree),
                "ours_err": max(max(rel(a, b) for a, b in zip(o["values"], truth)) for o in runs["ours"]),
                "peer_err": max(max(rel(a, b) for a, b in zip(p["values"], truth)) for p in runs[peer]),
            })
            rows[-1]["ratio"] = rows[-1]["ours_s"] / rows[-1]["peer_s"]
    print(f"{'row':>6} {'peer':>10} {'ours s':>7} {'peer s':>7} {'ratio':>6} {'ours HVP':>8} {'peer HVP':>8} "
          f"{'lambda_1':>9} {'agree':>8} {'ours err':>8} {'peer err':>8}  time spread ours | peer; HVPs per repeat")
    for r in rows:
        print(f"{r['row']:>6} {r['peer']:>10} {r['ours_s']:>7.2f} {r['peer_s']:>7.2f} {r['ratio']:>6.2f} "
              f"{r['ours_hvp']:>8.0f} {r['peer_hvp']:>8.0f} {r['value']:>9.5g} {r['agreement']:>8.1e} "
              f"{r['ours_err']:>8.1e} {r['peer_err']:>8.1e}  {r['ours_spread']} | {r['peer_spread']}; "
              f"{r['ours_hvps']} | {r['peer_hvps']}")
    top1_ph = next(r for r in rows if r["row"] == "top-1" and r["peer"] == "PyHessian")
    cl = [r for r in rows if r["peer"] == "curvlinops"]
    print(f"target top-1 <= 0.3x PyHessian: {'met' if top1_ph['ratio'] <= 0.3 else 'NOT met'} "
          f"({top1_ph['ratio']:.2f}); <= 1.0x curvlinops: "
          f"{'met' if all(r['ratio'] <= 1.0 for r in cl) else 'NOT met'}; agreement with curvlinops <= 1e-3: "
          f"{'met' if all(r['agreement'] <= 1e-3 for r in cl) else 'NOT met'}")
    return rows


def compare_trace(clf, batch, matvecs: int, seed: int, repeats: int, device) -> list[dict]:
    runs = _repeat({
        "ours": lambda s: ours_trace(clf, batch, matvecs, s),
        "curvlinops": lambda s: curvlinops_trace(clf, batch, matvecs, s),
        "PyHessian": lambda s: pyhessian_trace(clf, batch, matvecs, s),
    }, repeats, seed, device)
    ours = runs["ours"]
    ours_mean = float(np.mean([o["value"] for o in ours]))
    ours_se = math.sqrt(float(np.mean([o["se"] ** 2 for o in ours])))  # per-run standard error
    ours_sd = float(np.std([o["value"] for o in ours], ddof=1)) if len(ours) > 1 else float("nan")
    print(f"trace, {matvecs} HVPs per estimate, {repeats} repeats (seeds {seed}..{seed + repeats - 1}); "
          f"ours Hutch++: mean {ours_mean:.5g}, per-run SE {ours_se:.3g} (sd over repeats {ours_sd:.3g})")
    rows = []
    for peer in ("curvlinops", "PyHessian"):
        vals = [p["value"] for p in runs[peer]]
        peer_mean = float(np.mean(vals))
        # per-run SE of the peer: PyHessian reports one; for curvlinops (no SE) take the spread over repeats
        if peer == "PyHessian":
            peer_se = math.sqrt(float(np.mean([p["se"] ** 2 for p in runs[peer]])))
        else:
            peer_se = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        diff_se = math.sqrt((ours_se**2 + (peer_se if peer_se == peer_se else ours_se) ** 2) / len(vals))
        per_run = [abs(o["value"] - v) / o["se"] for o, v in zip(ours, vals)]
        rows.append({
            "row": f"trace ({matvecs} HVPs)", "peer": peer, "ours_s": _median(ours, "time"),
            "peer_s": _median(runs[peer], "time"), "ours_spread": _spread(ours), "peer_spread": _spread(runs[peer]),
            "ours_hvp": _median(ours, "hvp"), "peer_hvp": _median(runs[peer], "hvp"), "ours_value": ours_mean,
            "peer_value": peer_mean, "ours_se": ours_se, "peer_se": peer_se,
            "z_means": abs(ours_mean - peer_mean) / diff_se, "per_run_in_se": per_run, "ours_sd": ours_sd,
            "ours_values": [o["value"] for o in ours], "peer_values": vals,
        })
        rows[-1]["ratio"] = rows[-1]["ours_s"] / rows[-1]["peer_s"]
    print(f"{'peer':>10} {'ours s':>7} {'peer s':>7} {'ratio':>6} {'ours HVP':>8} {'peer HVP':>8} {'ours tr':>9} "
          f"{'peer tr':>9} {'ours SE':>8} {'peer SE':>8} {'|dmean|/SE':>10}  per run |d|/our SE")
    for r in rows:
        print(f"{r['peer']:>10} {r['ours_s']:>7.2f} {r['peer_s']:>7.2f} {r['ratio']:>6.2f} {r['ours_hvp']:>8.0f} "
              f"{r['peer_hvp']:>8.0f} {r['ours_value']:>9.5g} {r['peer_value']:>9.5g} {r['ours_se']:>8.3g} "
              f"{r['peer_se']:>8.3g} {r['z_means']:>10.2f}  " + ", ".join(f"{z:.2f}" for z in r["per_run_in_se"]))
    print("peer SE: PyHessian's Hutchinson SE per run; curvlinops' hutchpp_trace reports none, so its SE is the "
          "sample std of its repeats. |dmean|/SE: difference of the means over repeats in units of its SE.")
    return rows


def compare_density(clf, batch, runs_per: int, steps: int, seed: int, repeats: int, device) -> list[dict]:
    """SLQ: curvlinops with its default boundary search, and with the boundaries handed over (ours, same repeat)."""
    last: dict[str, tuple[float, float]] = {}

    def ours_job(s: int) -> dict:
        out = ours_density(clf, batch, runs_per, steps, s)
        last["boundaries"] = (out["bottom"], out["top"])
        return out

    runs = _repeat({
        "ours": ours_job,
        "curvlinops": lambda s: curvlinops_density(clf, batch, runs_per, steps, s),
        "curvlinops, boundaries given": lambda s: curvlinops_density(clf, batch, runs_per, steps, s,
                                                                     last["boundaries"]),
    }, repeats, seed, device)
    ours = runs["ours"]
    sd = (lambda xs: float(np.std(xs, ddof=1))) if repeats > 1 else (lambda xs: float("nan"))
    rows = []
    for peer in ("curvlinops", "curvlinops, boundaries given"):
        theirs = runs[peer]
        rows.append({"row": f"SLQ ({runs_per} x {steps} steps)", "peer": peer, "ours_s": _median(ours, "time"),
                     "peer_s": _median(theirs, "time"), "ours_spread": _spread(ours), "peer_spread": _spread(theirs),
                     "ours_hvp": _median(ours, "hvp"), "peer_hvp": _median(theirs, "hvp"),
                     "ours_mean": float(np.mean([o["mean"] for o in ours])),
                     "peer_mean": float(np.mean([p["mean"] for p in theirs])),
                     "ours_mean_sd": sd([o["mean"] for o in ours]), "peer_mean_sd": sd([p["mean"] for p in theirs]),
                     "ours_top": float(np.mean([o["top"] for o in ours]))})
        rows[-1]["ratio"] = rows[-1]["ours_s"] / rows[-1]["peer_s"]
    print(f"SLQ density, {runs_per} run(s) x {steps} Lanczos steps, {repeats} repeats; mean λ = the density's "
          "mean eigenvalue (trace / d), with its sd over repeats")
    print(f"{'peer':>28} {'ours s':>7} {'peer s':>7} {'ratio':>6} {'ours HVP':>8} {'peer HVP':>8} "
          f"{'ours mean λ':>20} {'peer mean λ':>20}  time spread ours | peer")
    for r in rows:
        print(f"{r['peer']:>28} {r['ours_s']:>7.2f} {r['peer_s']:>7.2f} {r['ratio']:>6.2f} {r['ours_hvp']:>8.0f} "
              f"{r['peer_hvp']:>8.0f} {r['ours_mean']:>10.3g} ± {r['ours_mean_sd']:<7.2g} "
              f"{r['peer_mean']:>10.3g} ± {r['peer_mean_sd']:<7.2g}  {r['ours_spread']} | {r['peer_spread']}")
    print(f"top Ritz value (ours) {rows[0]['ours_top']:.5g}")
    return rows


# --- where the time goes ----------------------------------------------------------------------------


def _median_time(fn: Callable[[], object], n: int, device) -> float:
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


class Clock:
    """Accumulated seconds and calls of wrapped functions, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, label: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        return timed


def _split_ours(clf, batch, tol: float, seed: int) -> dict:
    clock = Clock()
    t0 = time.perf_counter()
    op = our_operator(clf, batch)
    op.gradient = clock.wrap("build", op.gradient)  # the start vector's gradient builds the HVP graph
    op.matvec = clock.wrap("hvp", op.matvec)
    lanczos_eigenvalues(op, 1, max_iter=100, tol=tol, which="LM", seed=seed)
    return {"total": time.perf_counter() - t0, "build": clock.seconds["build"], "hvp_s": clock.seconds["hvp"],
            "hvp": clock.calls["hvp"]}


def _split_curvlinops(clf, batch, tol: float, seed: int) -> dict:
    from scipy.sparse.linalg import eigsh

    clock = Clock()
    t0 = time.perf_counter()
    with math_sdpa():
        op = curvlinops_operator(clf, batch)
        op._matmat_batch = clock.wrap("hvp", op._matmat_batch)
        v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
        eigsh(op.to_scipy(), k=1, which="LM", tol=tol, v0=v0, return_eigenvectors=False)
    return {"total": time.perf_counter() - t0, "build": 0.0, "hvp_s": clock.seconds["hvp"], "hvp": op.hvp}


def _split_pyhessian(clf, batch, tol: float, seed: int) -> dict:
    clock = Clock()
    t0 = time.perf_counter()
    with pyhessian_session(clf, batch, seed) as (h, counter):
        build = time.perf_counter() - t0
        ph_mod = sys.modules["pyhessian.hessian"]
        ph_mod.hessian_vector_product = clock.wrap("hvp", ph_mod.hessian_vector_product)  # restored on exit
        h.eigenvalues(maxIter=100, tol=tol, top_n=1)
    return {"total": time.perf_counter() - t0, "build": build, "hvp_s": clock.seconds["hvp"], "hvp": counter["n"]}


def profile(clf, batch, tol: float, seed: int, device, repeats: int = 5) -> dict:
    """Where top-1's time goes, per library: graph build, HVPs (count x cost) and the rest (solver, glue).

    Every run is instrumented (timers around the build and each HVP), so the split is exact for that run;
    medians over ``repeats`` interleaved runs. Then plain autograd costs: one forward + backward, one
    HVP alone and one per vector of a block of 4 (``is_grads_batched``), to show what batching buys.
    """
    runs = _repeat({"ours": lambda s: _split_ours(clf, batch, tol, s),
                    "curvlinops": lambda s: _split_curvlinops(clf, batch, tol, s),
                    "PyHessian": lambda s: _split_pyhessian(clf, batch, tol, s)}, repeats, seed, device)
    out: dict[str, dict] = {}
    print(f"top-1 at tol {tol:g}, medians of {repeats} interleaved runs (seconds)")
    print(f"{'library':>10} {'total':>7} {'build':>7} {'HVPs':>5} {'in HVPs':>8} {'per HVP':>8} {'rest':>7}")
    for name, rs in runs.items():
        row = {key: float(statistics.median(r[key] for r in rs)) for key in ("total", "build", "hvp_s", "hvp")}
        row["per_hvp"] = float(statistics.median(r["hvp_s"] / r["hvp"] for r in rs))
        row["rest"] = float(statistics.median(r["total"] - r["build"] - r["hvp_s"] for r in rs))
        out[name] = row
        print(f"{name:>10} {row['total']:>7.3f} {row['build']:>7.3f} {row['hvp']:>5.0f} {row['hvp_s']:>8.3f} "
              f"{row['per_hvp']:>8.3f} {row['rest']:>7.3f}")

    params = [p for _, p in select_params(clf, PARAM_GROUP)]
    x, y = batch
    with math_sdpa():
        plain = {"forward_backward": _median_time(
            lambda: torch.autograd.grad(F.cross_entropy(clf(x), y), params), repeats, device)}
        grads = torch.autograd.grad(F.cross_entropy(clf(x), y), params, create_graph=True)
        one = [torch.randn_like(p) for p in params]
        four = [torch.randn(4, *p.shape, device=p.device) for p in params]
        plain["hvp_alone"] = _median_time(
            lambda: torch.autograd.grad(grads, params, grad_outputs=one, retain_graph=True), repeats, device)
        plain["hvp_per_vector_in_block_of_4"] = _median_time(
            lambda: torch.autograd.grad(grads, params, grad_outputs=four, retain_graph=True, is_grads_batched=True),
            repeats, device) / 4
    for key, value in plain.items():
        print(f"plain autograd {key}: {value:.3f} s")
    out["plain_autograd"] = plain
    return out


def profile_ops(clf, batch, seed: int, rows: int = 12) -> None:
    """torch.profiler's top operators of one HVP, ours and curvlinops'."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    op = our_operator(clf, batch)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed))
    op.matvec(v)
    with math_sdpa():
        cl = curvlinops_operator(clf, batch)
        cl @ v
        for name, fn in (("ours", lambda: op.matvec(v)), ("curvlinops", lambda: cl @ v)):
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"--- one HVP, {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# --- CKA memory and GPU timings (kept from hessian_vs_pyhessian.py) ----------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss_kib() -> int:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in KiB (ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        now = _status_kib("VmRSS")
        if now is not None:
            return now
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kib() -> int:
    peak = _status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cka_memory(n: int = 20_000, dim: int = 768, batch: int = 500) -> dict:
    """Peak extra RSS of streaming minibatch CKA over ``n`` samples (run in a fresh process)."""
    from grace_bench.geometry.features import MinibatchCKA

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(dim, dim, generator=g) / dim**0.5
    MinibatchCKA(1, 1).update([torch.randn(8, dim)], [torch.randn(8, dim)])  # warm up the kernels
    base = _reset_peak_rss_kib()
    t0 = time.perf_counter()
    acc = MinibatchCKA(1, 1)
    for _ in range(0, n, batch):  # features arrive batch by batch, as from a model's forward passes
        x = torch.randn(batch, dim, generator=g)
        acc.update([x], [x @ mix + torch.randn(batch, dim, generator=g)])
    value = float(acc.compute()[0, 0])
    peak = _peak_rss_kib()
    return {"n": n, "dim": dim, "batch": batch, "cka": value, "seconds": time.perf_counter() - t0,
            "peak_extra_mib": (peak - base) / 1024, "inputs_mib": 2 * n * dim * 4 / 2**20,
            "full_gram_mib": n * n * 8 / 2**20}


def vit_timing(batch_size: int, seed: int, arch: str = "ViT-B-32", device: str = "cuda") -> None:
    """HVP and top-k timings for ``arch`` (random weights, its native size, e.g. 224 px) against both peers."""
    cuda = device.startswith("cuda")
    clf, size = build_classifier(arch, device, num_classes=1000, seed=seed)
    batch = fixed_batch(batch_size, size, 1000, device, seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    op = our_operator(clf, batch)
    v = torch.randn(op.dim, device=device)
    op.matvec(v)
    per_hvp = _median_time(lambda: op.matvec(v), 5, device)
    peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    print(f"{arch} {size}px, batch {batch_size}, {device}: {op.dim:,} params, {per_hvp * 1e3:.1f} ms per HVP{peak}")
    op.release()
    for k in (1, 5):
        runs = _repeat({"ours": lambda s, k=k: ours_top(clf, batch, k, 1e-3, s),
                        "curvlinops": lambda s, k=k: curvlinops_top(clf, batch, k, 1e-3, s),
                        "PyHessian": lambda s, k=k: pyhessian_top(clf, batch, k, 1e-3, s)}, 1, seed, device)
        a = runs["ours"][0]
        for peer in ("curvlinops", "PyHessian"):
            b = runs[peer][0]
            agree = max(rel(p, q) for p, q in zip(a["values"], b["values"]))
            print(f"{arch} top-{k} vs {peer}: ours {a['time']:.2f}s / {a['hvp']} HVPs, {peer} {b['time']:.2f}s / "
                  f"{b['hvp']} HVPs, ratio {a['time'] / b['time']:.2f}, agreement {agree:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="micro-clip", help="OpenCLIP architecture with random weights")
    ap.add_argument("--n", type=int, default=32, help="images in the fixed batch")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats per row; times are medians")
    ap.add_argument("--matvecs", type=int, default=30, help="HVPs per trace estimate (divisible by 3)")
    ap.add_argument("--slq-runs", type=int, default=1)
    ap.add_argument("--slq-iter", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    ap.add_argument("--gpu-batch", type=int, default=64)
    ap.add_argument("--gpu-arch", default="ViT-B-32", help="architecture timed on the GPU")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--part", default="all",
                    choices=("all", "top", "trace", "density", "profile", "ops", "cka", "gpu"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part == "cka":
        print(json.dumps(cka_memory()))
        return
    results: dict[str, object] = {"args": vars(args)}
    if args.part in ("all", "top", "trace", "density", "profile", "ops"):
        clf, size = build_classifier(args.model, "cpu", seed=args.seed)
        batch = fixed_batch(args.n, size, 10, "cpu", args.seed)
        if args.part in ("all", "top"):
            results["top"] = compare_top(clf, batch, args.tol, args.seed, args.repeats, "cpu")
        if args.part in ("all", "trace"):
            results["trace"] = compare_trace(clf, batch, args.matvecs, args.seed, args.repeats, "cpu")
        if args.part in ("all", "density"):
            rows = compare_density(clf, batch, args.slq_runs, args.slq_iter, args.seed, args.repeats, "cpu")
            results["density"] = [{k: v for k, v in r.items() if k not in ("grid", "density")} for r in rows]
        if args.part in ("all", "profile"):
            results["profile"] = profile(clf, batch, args.tol, args.seed, "cpu")
        if args.part == "ops":
            profile_ops(clf, batch, args.seed)
    if args.part == "all":
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "--part", "cka"], capture_output=True, text=True, env=env,
                             check=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        print(f"minibatch CKA, {m['n']} x {m['dim']} features, batches of {m['batch']}: CKA {m['cka']:.4f} in "
              f"{m['seconds']:.1f}s, peak extra memory {m['peak_extra_mib']:.1f} MiB (all features at once: "
              f"{m['inputs_mib']:.0f} MiB; one full {m['n']}x{m['n']} float64 Gram: {m['full_gram_mib']:.0f} MiB)")
    if args.part in ("all", "gpu"):
        if torch.cuda.is_available():
            vit_timing(args.gpu_batch, args.seed, args.gpu_arch, "cuda")
        else:
            print("CUDA not available: skipped the ViT-B-32 224px timing")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
