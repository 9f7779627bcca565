"""``grace-bench geometry hessian|sharpness|landscape|features|weights CKPT [--ref CKPT] ...``.

Each subcommand writes ``OUT/geometry-<kind>-<fp12>.json`` (atomic; the JSON is written last and marks
the result complete) and ``OUT/geometry-<kind>-<fp12>.npz`` (arrays). A rerun with the same settings
skips finished work; a file made with other settings is refused unless ``--force``. Landscape grids
resume after a kill from ``OUT/.geometry-state/``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from grace_bench.errors import UserError
from grace_bench.utils.atomic import atomic_path, atomic_write_json

if TYPE_CHECKING:  # pragma: no cover - registering the parser must not import torch
    import torch

GEOMETRY_SCHEMA = "grace-bench/geometry/v1"
KINDS = ("hessian", "sharpness", "landscape", "features", "weights")
# settings that do not change a number (excluded from the config hash)
_NOT_IN_CONFIG = {"func", "command", "geometry_kind", "out", "no_progress", "force", "fresh", "device", "label"}


def _add_common(p: argparse.ArgumentParser, *, data: bool = True, n: int = 128, n_note: str = "") -> None:
    p.add_argument("checkpoint",
                   help="checkpoint spec: micro | ARCH:TAG | ARCH:/path | local-dir:/p | hf-hub:... | runs/NAME")
    p.add_argument("--ref", help="reference checkpoint spec (default: the checkpoint's base model, if it records one)")
    p.add_argument("--base", help="base checkpoint spec for visual-only checkpoints (text tower source)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a checkpoint (only if trusted)")
    p.add_argument("--out", type=Path, default=Path("results"), help="result directory (default: results)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the data subset and of every random vector")
    p.add_argument("--label", help="name for this model in tables and figures")
    p.add_argument("--force", action="store_true", help="recompute and overwrite an existing result")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if data:
        p.add_argument("--suite", help="suite name (default: micro for micro models, else imagenet)")
        p.add_argument("--data-root", type=Path, help="root folder of the ImageNet-family datasets")
        p.add_argument("--dataset", help="ID dataset of the suite (default: the suite's first ID dataset)")
        p.add_argument("--split", choices=("eval", "train"), default="eval",
                       help="data: the ID evaluation set or the suite's training split (default: eval)")
        p.add_argument("--n", type=int, default=n, help=f"size of the fixed data subset (default {n}{n_note})")
        p.add_argument("--batch-size", type=int, default=64, help="batch size (the loss is averaged over batches)")


def add_geometry_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``geometry`` and its five subcommands on the top-level CLI's subparsers."""
    p = subparsers.add_parser("geometry", help="geometry diagnostics: Hessian, sharpness, landscape, features, weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="geometry_kind", required=True)

    h = sub.add_parser("hessian", help="top eigenvalues (Lanczos), trace (Hutchinson/Hutch++), layer curvature, "
                                       "spectral density (SLQ)")
    _add_common(h, n=32, n_note="; every HVP costs about two forward+backward passes over all n images")
    h.add_argument("--group", default="vision", help="parameters: vision | lora | all | a name prefix (default vision)")
    h.add_argument("--top-k", type=int, default=5)
    h.add_argument("--lanczos-iter", type=int, default=100, help="maximum Lanczos steps (HVPs)")
    h.add_argument("--tol", type=float, default=1e-3,
                   help="convergence: relative eigenvalue error of each wanted Ritz value, as judged by "
                        "--lanczos-criterion (default 1e-3)")
    h.add_argument("--lanczos-criterion", choices=("estimate", "residual"), default="estimate",
                   help="estimate: min(r, r^2/gap)/|theta| <= tol, the usual Lanczos error estimate (default); "
                        "residual: r/|theta| <= tol, a guaranteed bound that needs more HVPs")
    h.add_argument("--trace-samples", type=int, default=10,
                   help="Hutchinson samples (0 = skip trace and layers; default 10). The Krylov part of the top-k "
                        "Lanczos run is taken exactly and only the rest is sampled (std err reported as trace_se)")
    h.add_argument("--hutchpp", type=int, default=0, help="Hutch++ matvec budget (0 = skip)")
    h.add_argument("--slq-runs", type=int, default=1,
                   help="SLQ start vectors (0 = skip the density; default 1, as PyHessian's n_v=1). The "
                        "first run is the top-k Lanczos run itself and costs no extra HVPs")
    h.add_argument("--slq-iter", type=int, default=24, help="Lanczos steps per SLQ run (default 24)")
    h.add_argument("--granularity", choices=("block", "module", "param"), default="block",
                   help="layer unit of the per-layer curvature (default: transformer block)")
    h.add_argument("--power", action="store_true", help="also run power iteration (for comparison)")
    h.add_argument("--cache-graph", action="store_true",
                   help="keep the gradient graph of all batches in memory (faster HVPs; one batch always is)")

    s = sub.add_parser("sharpness", help="average-case and worst-case (m-)sharpness over a rho grid")
    _add_common(s)
    s.add_argument("--group", default="vision", help="parameters to perturb (default vision)")
    s.add_argument("--rho", default="0.01,0.02,0.05,0.1", help="comma list or START:STOP:NUM")
    s.add_argument("--kind", choices=("average", "worst", "both"), default="both")
    s.add_argument("--adaptive", action="store_true", help="perturbations relative to |w| (ASAM-style)")
    s.add_argument("--samples", type=int, default=5,
                   help="random directions per rho (average case; default 5). Each draw subtracts the first-order "
                        "term g.delta (mean zero; one gradient for all draws), which otherwise dominates the "
                        "variance of single draws; the std err is reported as sharpness_se")
    s.add_argument("--m", type=int, help="m-sharpness chunk size (default: the whole subset)")
    s.add_argument("--steps", type=int, default=5,
                   help="PGD steps in weight space (worst case; default 5: on micro within 3%% of the 10-step "
                        "value at rho 0.1, closer at smaller rho)")

    la = sub.add_parser("landscape", help="1D/2D loss landscape (filter-normalised directions) or θ0→θ interpolation")
    _add_common(la)
    la.add_argument("--mode", choices=("1d", "2d", "interp"), default="1d")
    la.add_argument("--group", default="vision", help="parameters the directions move (default vision)")
    la.add_argument("--range", dest="xrange",
                    help="coordinates: START:STOP:NUM or a comma list; write --range=-0.5:0.5:11 when it starts "
                         "with '-' (default: 1d -1:1:21, 2d -1:1:11, interp 0:1:11)")
    la.add_argument("--range-y", dest="yrange", help="y coordinates for 2d (default: as --range)")
    la.add_argument("--fresh", action="store_true", help="discard a saved partial grid and its directions")

    f = sub.add_parser("features", help="CKA to the reference, Gram drift, class-centroid cosine, ΔLID")
    _add_common(f, n=256)
    f.add_argument("--ood", nargs="+", help="OOD datasets (default: every 'ood' dataset of the suite)")
    f.add_argument("--eps", default="4/255", help="L-inf PGD budget of the adversarial inputs (default 4/255)")
    f.add_argument("--pgd-steps", type=int, default=10)
    f.add_argument("--pgd-step-size", default="1/255")
    f.add_argument("--k", type=int, default=20, help="neighbours of the LID estimate")
    f.add_argument("--pool", choices=("auto", "cls", "mean"), default="auto", help="token pooling of layer features")

    w = sub.add_parser("weights", help="relative weight drift ||θ-θ0||/||θ0||, overall, per tower and per layer")
    _add_common(w, data=False)
    p.set_defaults(func=run_geometry)
    return p


def run_geometry(args: argparse.Namespace) -> int:
    """Run the geometry subcommand in ``args`` and write its JSON + NPZ; returns the exit code."""
    kind = args.geometry_kind
    runners = {"hessian": _hessian, "sharpness": _sharpness, "landscape": _landscape, "features": _features,
               "weights": _weights}
    if kind not in runners:
        raise UserError(f"unknown geometry kind '{kind}'; choose one of: {', '.join(KINDS)}")
    _check_args(args)
    from grace_bench.eval.run import resolve_device
    from grace_bench.models.checkpoints import load_checkpoint

    device = resolve_device(args.device)
    clip = load_checkpoint(args.checkpoint, base=args.base, trust_pickle=args.trust_pickle, device=device)
    args.ref = args.ref or clip.base_spec  # record the reference actually used
    if args.ref is None and (kind == "weights" or (kind == "landscape" and args.mode == "interp")):
        raise UserError(f"geometry {kind} needs a reference model; pass --ref CKPT (e.g. the zero-shot checkpoint)")
    config = _config(args)
    path = Path(args.out) / f"geometry-{kind}-{clip.fingerprint()[:12]}.json"
    if _up_to_date(path, config, args.force):
        print(f"{path} is up to date (same checkpoint and settings); pass --force to recompute")
        return 0
    t0 = time.perf_counter()
    payload, arrays = runners[kind](args, clip, device, config)
    record = {
        "schema": GEOMETRY_SCHEMA,
        "kind": kind,
        "checkpoint": {"spec": clip.spec, "fingerprint": clip.fingerprint(), "arch": clip.arch, "base": clip.base_spec},
        "label": args.label or clip.spec,
        "config": config,
        "config_hash": _hash(config),
        "seed": args.seed,
        "device": str(device),
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(),
        **payload,
        "wall_time_s": time.perf_counter() - t0,
    }
    if arrays:
        with atomic_path(path.with_suffix(".npz")) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write_json(path, record)
    print(_headline(kind, record, path))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.geometry_kind == "landscape" and args.xrange is None:
        args.xrange = {"1d": "-1:1:21", "2d": "-1:1:11", "interp": "0:1:11"}[args.mode]
    for name in ("n", "batch_size", "top_k", "lanczos_iter", "samples", "steps", "k", "pgd_steps"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("trace_samples", "slq_runs", "slq_iter", "hutchpp"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")


def _config(args: argparse.Namespace) -> dict[str, Any]:
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in _NOT_IN_CONFIG}
    cfg["kind"] = args.geometry_kind
    return cfg


def _hash(config: dict) -> str:
    from grace_bench.utils.hashing import config_hash

    return config_hash(config)


def _versions() -> dict[str, str]:
    from grace_bench.eval.store import package_versions

    return package_versions()


def _up_to_date(path: Path, config: dict, force: bool) -> bool:
    if force or not path.exists():
        return False
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"{path} is not a readable result ({type(exc).__name__}); delete it or pass --force to "
                        "recompute it") from exc
    if not isinstance(old, dict):
        raise UserError(f"{path} holds a JSON {type(old).__name__}, not a result; delete it or pass --force")
    if old.get("config_hash") == _hash(config):
        return True
    raise UserError(f"{path} holds a result with other settings; pass --force to overwrite it or use another --out")


def _headline(kind: str, record: dict, path: Path) -> str:
    if kind == "hessian":
        top = record.get("lambda_max")
        tr = record.get("trace") or {}
        extra = f", trace {tr['trace']:.4g} ± {tr['trace_se']:.2g}" if tr else ""
        return f"λ_max {top:.4g}{extra} -> {path}"
    if kind == "weights":
        return f"relative weight drift {record['overall']['relative']:.4g} -> {path}"
    if kind == "features" and record.get("cka_to_ref") is not None:
        return f"CKA to reference {record['cka_to_ref']:.4f} -> {path}"
    return f"wrote {path}"


# ---------------------------------------------------------------------------------------------- data


def _suite_data(args: argparse.Namespace, clip) -> tuple[Any, Any, list, dict]:
    from grace_bench.data.suites import DataContext, get_suite
    from grace_bench.eval.run import default_suite_for
    from grace_bench.geometry.losses import batches_fingerprint, fixed_subset

    suite = get_suite(args.suite or default_suite_for(clip))
    spec = suite.dataset(args.dataset) if args.dataset else _first_id(suite)
    ctx = DataContext(root=args.data_root, preprocess=clip.preprocess, image_size=clip.image_size)
    dataset = suite.train_split(ctx, "train") if args.split == "train" else spec.load(ctx)
    batches = fixed_subset(dataset, args.n, args.batch_size, seed=args.seed)
    info = {"suite": suite.name, "dataset": spec.name, "split": args.split, "n": sum(len(y) for _, y in batches),
            "fingerprint": batches_fingerprint(batches)}
    return suite, spec, batches, info


def _first_id(suite):
    ids = suite.by_role("id")
    if not ids:
        raise UserError(f"suite '{suite.name}' has no ID dataset; pass --dataset")
    return ids[0]


def _classifier(clip, suite, spec, device, progress: bool):
    from grace_bench.eval.context import classifier_for

    return classifier_for(clip, suite, spec, device=device, progress=progress).eval()


def _ref_clip(args: argparse.Namespace, clip, device, *, required: bool, why: str):
    from grace_bench.models.checkpoints import load_checkpoint

    spec = args.ref
    if spec is None:
        if required:
            raise UserError(f"{why} needs a reference model; pass --ref CKPT (e.g. the zero-shot checkpoint)")
        return None
    return load_checkpoint(spec, trust_pickle=args.trust_pickle, device=device)


def _ref_info(ref) -> dict | None:
    if ref is None:
        return None
    return {"spec": ref.spec, "fingerprint": ref.fingerprint(), "arch": ref.arch}


# ---------------------------------------------------------------------------------------------- kinds


def _hessian(args, clip, device, config) -> tuple[dict, dict]:
    from grace_bench.geometry.hessian import build_operator, hessian_report
    from grace_bench.geometry.losses import select_params

    suite, spec, batches, data = _suite_data(args, clip)
    clf = _classifier(clip, suite, spec, device, not args.no_progress)
    params = select_params(clf, args.group)
    op = build_operator(clf, batches, params, cache_graph=True if args.cache_graph else None)
    report, arrays = hessian_report(
        op, top_k=args.top_k, lanczos_iter=args.lanczos_iter, tol=args.tol, criterion=args.lanczos_criterion,
        trace_samples=args.trace_samples,
        hutchpp_matvecs=args.hutchpp, slq_runs=args.slq_runs, slq_iter=args.slq_iter, power=args.power,
        granularity=args.granularity, seed=args.seed, progress=not args.no_progress,
    )
    top = report["top_eigenvalues"]
    payload = {"data": data, "group": args.group, "lambda_max": top["eigenvalues"][0], **report,
               "loss": "mean zero-shot-head cross-entropy over the fixed subset (math SDPA, eval mode)"}
    arrays["eigenvalues"] = np.asarray(top["eigenvalues"])
    layers = (report.get("trace") or {}).get("layers") or {}
    if layers:
        payload["per_layer_curvature"] = {k: v["kappa"] for k, v in layers.items()}
        payload["layer_names"] = list(layers)
        arrays["per_layer_curvature"] = np.asarray([v["kappa"] for v in layers.values()])
        arrays["per_layer_curvature_se"] = np.asarray([v["kappa_se"] for v in layers.values()])
    return payload, arrays


def _sharpness(args, clip, device, config) -> tuple[dict, dict]:
    from grace_bench.geometry.landscape import parse_range
    from grace_bench.geometry.losses import select_params
    from grace_bench.geometry.sharpness import average_sharpness, worst_case_sharpness

    rhos = parse_range(args.rho)
    suite, spec, batches, data = _suite_data(args, clip)
    clf = _classifier(clip, suite, spec, device, not args.no_progress)
    params = select_params(clf, args.group)
    progress = not args.no_progress
    payload: dict[str, Any] = {"data": data, "group": args.group, "rho": rhos}
    arrays: dict[str, np.ndarray] = {"rho": np.asarray(rhos)}
    if args.kind in ("average", "both"):
        avg = average_sharpness(clf, batches, params, rhos, num_samples=args.samples, adaptive=args.adaptive,
                                seed=args.seed, progress=progress)
        arrays["average_samples"] = np.asarray(avg.pop("samples"))
        arrays["average"] = np.asarray(avg["sharpness"])
        payload["average"] = avg
    if args.kind in ("worst", "both"):
        worst = worst_case_sharpness(clf, batches, params, rhos, m=args.m, steps=args.steps, adaptive=args.adaptive,
                                     seed=args.seed, progress=progress)
        arrays["worst"] = np.asarray(worst["sharpness"])
        payload["worst"] = worst
    payload["definitions"] = {k: payload[k]["definition"] for k in ("average", "worst") if k in payload}
    return payload, arrays


def _landscape(args, clip, device, config) -> tuple[dict, dict]:
    from grace_bench.geometry.landscape import (
        filter_normalized_direction,
        interpolation,
        landscape,
        load_directions,
        parse_range,
        save_directions,
    )
    from grace_bench.geometry.losses import select_params

    suite, spec, batches, data = _suite_data(args, clip)
    clf = _classifier(clip, suite, spec, device, not args.no_progress)
    state = Path(args.out) / ".geometry-state" / f"landscape-{clip.fingerprint()[:12]}-{_hash(config)}"
    if args.fresh and state.exists():
        shutil.rmtree(state)
    xs = parse_range(args.xrange)
    progress = not args.no_progress
    meta = {"checkpoint": clip.fingerprint(), "config_hash": _hash(config)}
    arrays: dict[str, np.ndarray] = {}
    payload: dict[str, Any] = {"data": data, "mode": args.mode}
    if args.mode == "interp":
        ref = _ref_clip(args, clip, device, required=True, why="landscape --mode interp")
        res = interpolation(clf, batches, ref.model.state_dict(), clip.model.state_dict(), xs, module=clf.model,
                            cache_path=state / "grid.npz", meta=meta, progress=progress)
        payload.update(ref=_ref_info(ref), path="(1-a)*theta0 + a*theta over every floating-point state-dict entry; "
                       "zero-shot head of the checkpoint's text tower, fixed along the path")
    else:
        params = select_params(clf, args.group)
        count = 1 if args.mode == "1d" else 2
        dir_path = state / "directions.npz"
        if dir_path.exists():
            directions = load_directions(dir_path, params, count)
        else:
            directions = [filter_normalized_direction(params, seed=args.seed + i) for i in range(count)]
            save_directions(dir_path, directions, {"seeds": [args.seed + i for i in range(count)]})
        axes = [xs] if count == 1 else [xs, parse_range(args.yrange or args.xrange)]
        res = landscape(clf, batches, params, directions, axes, cache_path=state / "grid.npz", meta=meta,
                        progress=progress)
        for i, d in enumerate(directions):
            for name, t in d.items():
                arrays[f"direction_{i}/{name}"] = t.float().numpy()
        payload.update(group=args.group, direction_seeds=[args.seed + i for i in range(count)],
                       directions="filter-normalised Gaussian (Li et al. 2018); zero for 0-d/1-d parameters; "
                                  "stored in the NPZ as direction_<i>/<parameter>")
    if not res["complete"]:  # pragma: no cover - only when interrupted without an exception
        raise UserError("the landscape grid is incomplete; rerun the same command to resume it")
    for i, axis in enumerate(res["axes"]):
        arrays[f"axis_{i}"] = np.asarray(axis)
    arrays["loss"] = res["loss"]
    arrays["accuracy"] = res["accuracy"]
    payload.update(axes=[np.asarray(a).tolist() for a in res["axes"]], shape=list(res["loss"].shape),
                   loss_at_origin=_value_at_zero(res), meta=res["meta"])
    shutil.rmtree(state, ignore_errors=True)
    if state.parent.exists() and not any(state.parent.iterdir()):
        state.parent.rmdir()
    return payload, arrays


def _value_at_zero(res: dict) -> float | None:
    idx = []
    for axis in res["axes"]:
        hits = np.flatnonzero(np.isclose(np.asarray(axis), 0.0))
        if not hits.size:
            return None
        idx.append(int(hits[0]))
    return float(res["loss"][tuple(idx)])


def _embed(clf, batches, device) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    feats, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            feats.append(clf.image_features(x.to(device)).float().cpu())
            labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def _adversarial(clf, batches, args, device) -> list:
    import torch

    from grace_bench.attacks.pgd import pgd_attack

    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = []
    for x, y in batches:
        x_adv = pgd_attack(clf, x.to(device), y.to(device), eps=args.eps, steps=args.pgd_steps,
                           step_size=args.pgd_step_size, random_start=True, generator=gen)
        out.append((x_adv.cpu(), y))
    return out


def _model_side(clf, id_b, ood: dict, args, device, *, layers: bool, progress: bool) -> dict:
    """Every forward pass the feature metrics need from one model, each done once.

    ``layers``: collect the pooled resblock features of the ID images too (for layer-wise CKA); their
    ``embedding`` entry is the ID embedding, so the ID images pass through the model once either way.
    """
    import torch

    from grace_bench.geometry.features import layer_features

    if layers:
        feats = layer_features(clf, id_b, pool=args.pool, progress=progress)
        f_id, y_id = feats["embedding"], torch.cat([y.cpu() for _, y in id_b])
    else:
        feats = None
        f_id, y_id = _embed(clf, id_b, device)
    adv = _adversarial(clf, id_b, args, device)
    f_adv, y_adv = _embed(clf, adv, device)
    return {"layers": feats, "id": (f_id, y_id), "adv": (f_adv, y_adv),
            "ood": {name: _embed(clf, batches, device) for name, (batches, _) in ood.items()}}


def _domain_metrics(side: dict, ood: dict, args) -> tuple[dict, dict]:
    import torch

    from grace_bench.geometry.features import centroid_cosine, delta_lid

    f_id, y_id = side["id"]
    f_adv, y_adv = side["adv"]
    out: dict[str, Any] = {"centroid_cosine": {"id_to_ood": {}, "id_to_adv": None}, "lid": {"ood": {}}}
    for name, (_, subset) in ood.items():
        f, y = side["ood"][name]
        if subset is not None:
            y = torch.as_tensor(subset)[y]
        out["centroid_cosine"]["id_to_ood"][name] = centroid_cosine(f_id, y_id, f, y)
        out["lid"]["ood"][name] = delta_lid(f_id, f, k=args.k)
    out["centroid_cosine"]["id_to_adv"] = centroid_cosine(f_id, y_id, f_adv, y_adv)
    out["lid"]["adv"] = delta_lid(f_id, f_adv, k=args.k)
    cc = out["centroid_cosine"]
    cc["id_to_ood_mean"] = float(np.mean([v["mean"] for v in cc["id_to_ood"].values()])) if cc["id_to_ood"] else None
    out["lid"]["clean"] = out["lid"]["adv"]["lid_clean"]
    out["lid"]["delta_ood_mean"] = (float(np.mean([v["delta"] for v in out["lid"]["ood"].values()]))
                                    if out["lid"]["ood"] else None)
    out["lid"]["delta_adv"] = out["lid"]["adv"]["delta"]
    return out, {"embeddings_id": f_id.numpy(), "labels_id": y_id.numpy(), "embeddings_adv": f_adv.numpy()}


def _same_model(clip, ref) -> bool:
    """True when the reference is the checkpoint itself (same weights and preprocessing): reuse its results."""
    return (ref.fingerprint() == clip.fingerprint() and ref.arch == clip.arch
            and tuple(ref.mean) == tuple(clip.mean) and tuple(ref.std) == tuple(clip.std))


def _features(args, clip, device, config) -> tuple[dict, dict]:
    import copy

    from grace_bench.data.suites import DataContext
    from grace_bench.geometry.features import gram_drift, layerwise_cka_from_features, linear_cka
    from grace_bench.geometry.losses import fixed_subset

    suite, spec, id_batches, data = _suite_data(args, clip)
    progress = not args.no_progress
    clf = _classifier(clip, suite, spec, device, progress)
    ctx = DataContext(root=args.data_root, preprocess=clip.preprocess, image_size=clip.image_size)
    ood_specs = [suite.dataset(n) for n in args.ood] if args.ood else suite.by_role("ood")
    ood = {s.name: (fixed_subset(s.load(ctx), args.n, args.batch_size, seed=args.seed), s.class_subset)
           for s in ood_specs}
    ref = _ref_clip(args, clip, device, required=False, why="features")
    side = _model_side(clf, id_batches, ood, args, device, layers=ref is not None, progress=progress)
    model_metrics, arrays = _domain_metrics(side, ood, args)
    payload: dict[str, Any] = {"data": {**data, "ood": {k: sum(len(y) for _, y in b) for k, (b, _) in ood.items()},
                                        "adversarial": {"attack": "pgd", "eps": args.eps, "steps": args.pgd_steps,
                                                        "step_size": args.pgd_step_size, "random_start": True,
                                                        "against": "each model attacks itself"}},
                               **model_metrics,
                               "definitions": _FEATURE_DEFINITIONS}
    if ref is not None:
        same = _same_model(clip, ref)
        if same:  # identical weights, data and seeds: every reference number equals the checkpoint's
            ref_side, ref_metrics = side, copy.deepcopy(model_metrics)
        else:
            ref_clf = _classifier(ref, suite, spec, device, progress)
            ref_side = _model_side(ref_clf, id_batches, ood, args, device, layers=True, progress=progress)
            ref_metrics, _ = _domain_metrics(ref_side, ood, args)
        names_x, names_y, grid = layerwise_cka_from_features(side["layers"], ref_side["layers"],
                                                             [len(y) for _, y in id_batches])
        f_id, r_id = side["id"][0], ref_side["id"][0]
        drift = {"id": gram_drift(f_id, r_id)}
        for name in ood:
            drift[name] = gram_drift(side["ood"][name][0], ref_side["ood"][name][0])
        payload.update(
            ref=_ref_info(ref), reference_is_checkpoint=same, layer_names=names_x, ref_layer_names=names_y,
            cka_to_ref=float(grid[-1, -1]),
            cka={"minibatch_linear": float(grid[-1, -1]), "linear": linear_cka(f_id, r_id),
                 "linear_debiased": linear_cka(f_id, r_id, debiased=True)},
            cka_kind="minibatch linear CKA (unbiased HSIC), final embedding",
            gram_drift=drift, reference_metrics=ref_metrics,
        )
        arrays["cka_layers"] = grid
        arrays["ref_embeddings_id"] = r_id.numpy()
    return payload, arrays


_FEATURE_DEFINITIONS = {
    "cka": "linear CKA; minibatch = unbiased HSIC summed over batches (Nguyen et al. 2021); layers = pooled "
           "resblock tokens (CLS, or mean for avg-pool towers) plus the final unit embedding",
    "gram_drift": "||K~ - K~0||_F / ||K~0||_F, centred linear Grams of unit embeddings of the same inputs",
    "centroid_cosine": "mean over classes of cos(mean ID embedding, mean shifted embedding) of that class",
    "lid": "MLE with k nearest clean ID embeddings (Euclidean); delta = mean LID(shifted) - mean LID(clean)",
}


def _weights(args, clip, device, config) -> tuple[dict, dict]:
    from grace_bench.geometry.weights import weight_drift

    ref = _ref_clip(args, clip, device, required=True, why="weights")
    drift = weight_drift(clip.model.state_dict(), ref.model.state_dict())
    arrays = {"layer_relative": np.asarray([v["relative"] for v in drift["layers"].values()])}
    return {"ref": _ref_info(ref), **drift, "layer_names": list(drift["layers"])}, arrays
