"""`grace-bench eval`: clean accuracy on every suite dataset, the adversarial axis, aggregates, one summary.

Each (checkpoint fingerprint, dataset, kind, config hash) result is a JSON file; a rerun skips finished
files, and a killed run resumes from the saved partial state.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from grace_bench.attacks.chunks import DEFAULT_CHUNK_SIZE, clear_state
from grace_bench.attacks.threat import canonical_attack
from grace_bench.data.suites import DataContext, DatasetSpec, Suite, get_suite
from grace_bench.errors import UserError
from grace_bench.eval.clean import evaluate_clean
from grace_bench.eval.config import EvalConfig, suite_defaults
from grace_bench.eval.context import classifier_for
from grace_bench.eval.distributed import barrier, init_from_env, shard
from grace_bench.eval.metrics import AGGREGATE_DEFINITIONS, aggregates
from grace_bench.eval.store import SUMMARY_SCHEMA, ResultStore, package_versions
from grace_bench.models.clip_model import ClipModel
from grace_bench.utils.atomic import atomic_write_json
from grace_bench.utils.hashing import config_hash, text_list_hash

PROTOCOL_VERSION = "grace-bench/eval/v1"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda[:N]") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def read_text_list(path: Path, what: str, need_placeholder: bool = False) -> list[str]:
    """Non-empty lines of a UTF-8 file (templates or class names)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(f"cannot read {what} file {path}: {exc.strerror}; check the path") from exc
    if not lines:
        raise UserError(f"{what} file {path} is empty; put one entry per line")
    if need_placeholder and any("{}" not in ln for ln in lines):
        bad = next(ln for ln in lines if "{}" not in ln)
        raise UserError(f"template '{bad}' in {path} has no '{{}}' placeholder for the class name; add one")
    return lines


def default_suite_for(clip: ClipModel) -> str:
    return "micro" if clip.arch in ("micro-clip", "tiny-clip") else "imagenet"


def _prompt_config(cfg: EvalConfig, suite: Suite) -> tuple[list[str], list[str]]:
    templates = read_text_list(cfg.templates_file, "templates", True) if cfg.templates_file else list(suite.templates)
    classnames = read_text_list(cfg.classnames_file, "class names") if cfg.classnames_file else list(suite.classnames)
    if len(classnames) != len(suite.classnames):
        raise UserError(
            f"class-name file has {len(classnames)} names but suite '{suite.name}' has {len(suite.classnames)} classes"
        )
    return templates, classnames


def run_eval(cfg: EvalConfig, clip: ClipModel | None = None) -> dict[str, Any]:
    """Run the whole evaluation described by ``cfg`` and return the summary dict (also written to disk)."""
    from grace_bench.models.checkpoints import load_checkpoint

    device = resolve_device(cfg.device)
    rank, world = init_from_env(device)
    if clip is None:
        clip = load_checkpoint(cfg.checkpoint, base=cfg.base, trust_pickle=cfg.trust_pickle)
    clip.model.to(device).eval()
    suite = get_suite(cfg.suite or default_suite_for(clip))
    defaults = suite_defaults(suite.name)
    attack = canonical_attack(cfg.attack or defaults["attack"])  # explicit name: what runs is what is recorded
    eps = cfg.eps or defaults["eps"]
    n_adv = cfg.n_adv if cfg.n_adv is not None else defaults["n_adv"]
    if cfg.limit is not None:
        n_adv = min(n_adv, cfg.limit)
    templates, classnames = _prompt_config(cfg, suite)
    ctx = DataContext(root=cfg.data_root, preprocess=clip.preprocess, image_size=clip.image_size)
    store = ResultStore(cfg.out)
    fp = clip.fingerprint()
    prompt_key = {"templates": text_list_hash(templates), "classnames": text_list_hash(classnames)}

    specs = _selected_datasets(suite, cfg)
    per_dataset: dict[str, dict] = {}
    adversarial: dict[str, dict] = {}
    adv_names = cfg.adv_datasets or [d.name for d in suite.by_role("id")]
    for spec in specs:
        dataset = _load_dataset(spec, ctx)
        if dataset is None:
            continue
        clf = classifier_for(clip, suite, spec, templates, classnames, device=device, progress=cfg.progress)
        per_dataset[spec.name] = _clean_result(cfg, store, clip, suite, spec, dataset, clf, prompt_key,
                                               device, rank, world)
        if attack != "none" and spec.name in adv_names:
            adversarial[spec.name] = _adversarial_result(cfg, store, clip, suite, spec, dataset, clf, prompt_key,
                                                         attack, eps, n_adv, rank)
    missing = [n for n in adv_names if n not in {d.name for d in specs}]
    if missing:
        raise UserError(f"--adv-datasets names {missing} which are not in suite '{suite.name}'")
    barrier(world)

    id_names = [d.name for d in suite.by_role("id")]
    summary = {
        "schema": SUMMARY_SCHEMA,
        "checkpoint": {"spec": clip.spec, "fingerprint": fp, "arch": clip.arch, "base": clip.base_spec,
                       **{k: clip.info[k] for k in ("method", "alpha") if clip.info.get(k) is not None}},
        "suite": suite.name,
        "label": cfg.label or clip.spec,
        "per_dataset": per_dataset,
        "adversarial": {k: {kk: vv for kk, vv in v.items() if kk != "robust_flags"} for k, v in adversarial.items()},
        "aggregates": aggregates(per_dataset, adversarial, id_names[0] if id_names else ""),
        "protocol": {
            "version": PROTOCOL_VERSION,
            "templates": len(templates),
            "templates_hash": prompt_key["templates"],
            "classnames_hash": prompt_key["classnames"],
            "attack": attack,
            "eps": eps,
            "norm": cfg.norm,
            "n_adv": n_adv,
            **({"attack_chunk": DEFAULT_CHUNK_SIZE} if attack != "none" else {}),
            "precision_clean": cfg.precision,
            "precision_attack": "fp32",
            "limit": cfg.limit,
            "seed": cfg.seed,
            "definitions": AGGREGATE_DEFINITIONS,
        },
        "versions": package_versions(),
    }
    if rank == 0:
        atomic_write_json(store.summary_path(fp), summary)
    return summary


def _selected_datasets(suite: Suite, cfg: EvalConfig) -> list[DatasetSpec]:
    if not cfg.datasets:
        return list(suite.datasets)
    return [suite.dataset(name) for name in cfg.datasets]


def _load_dataset(spec: DatasetSpec, ctx: DataContext):
    try:
        return spec.load(ctx)
    except UserError:
        if spec.optional:
            return None
        raise


def _clean_result(cfg, store, clip, suite, spec, dataset, clf, prompt_key, device, rank, world) -> dict:
    n_total = len(dataset)
    n = n_total if cfg.limit is None else min(cfg.limit, n_total)
    config = {"protocol": PROTOCOL_VERSION, "suite": suite.name, "dataset": spec.name, "n": n,
              "precision": cfg.precision, **prompt_key}
    h = config_hash(config)
    path = store.result_path(clip.fingerprint(), spec.name, "clean", h)
    done = store.load(path)
    if done is None:
        partial = store.state_dir(clip.fingerprint(), spec.name, "clean", h) / f"rank{rank}of{world}.json"
        start = time.perf_counter()
        metrics = evaluate_clean(
            clf, dataset, shard(list(range(n)), rank, world), batch_size=cfg.batch_size, precision=cfg.precision,
            device=device, num_workers=cfg.workers, partial_path=partial, partial_key=h, world=world,
            progress=cfg.progress and rank == 0, desc=spec.name,
        )
        wall = time.perf_counter() - start
        if hasattr(dataset, "report"):  # image folders: counts of unreadable / skipped files
            metrics["data_report"] = dataset.report()
        done = {
            "kind": "clean",
            "checkpoint": {"spec": clip.spec, "fingerprint": clip.fingerprint(), "arch": clip.arch},
            "dataset": {"name": spec.name, "role": spec.role, "suite": suite.name, "n": metrics["n"],
                        "classes": clf.num_classes},
            "metrics": {k: v for k, v in metrics.items() if k != "forward_seconds"},
            "config": {**config, "batch_size": cfg.batch_size, "device": str(device), "world_size": world},
            "config_hash": h,
            "versions": package_versions(),
            "seed": cfg.seed,
            "wall_time_s": wall,
            "images_per_s": metrics["n"] / max(metrics["forward_seconds"], 1e-9),
        }
        if rank == 0:
            store.write(path, done)
    m = done["metrics"]
    return {"role": spec.role, "n": m["n"], "top1": m["top1"], **({"top5": m["top5"]} if "top5" in m else {}),
            "result_file": str(path)}


def _adversarial_result(cfg, store, clip, suite, spec, dataset, clf, prompt_key, attack, eps, n_adv, rank) -> dict:
    from grace_bench.attacks.evaluate import evaluate_adversarial

    indices = suite.adv_indices(dataset, n_adv) if suite.adv_indices is not None else None
    config = {"protocol": PROTOCOL_VERSION, "suite": suite.name, "dataset": spec.name, "attack": attack,
              "eps": eps, "norm": cfg.norm, "n": n_adv, "seed": cfg.seed, "chunk_size": DEFAULT_CHUNK_SIZE,
              **prompt_key}
    h = config_hash(config)
    path = store.result_path(clip.fingerprint(), spec.name, "adversarial", h)
    done = store.load(path)
    if done is None:
        if rank != 0:  # attacks run on rank 0 only; they are resumable rather than sharded
            return {}
        start = time.perf_counter()
        state_dir = store.state_dir(clip.fingerprint(), spec.name, "adversarial", h)
        res = evaluate_adversarial(
            clf, dataset, attack=attack, eps=eps, norm=cfg.norm, n=n_adv, batch_size=cfg.adv_batch_size,
            chunk_size=DEFAULT_CHUNK_SIZE, state_dir=state_dir, seed=cfg.seed, indices=indices,
            progress=cfg.progress,
        )
        done = {
            "kind": "adversarial",
            "checkpoint": {"spec": clip.spec, "fingerprint": clip.fingerprint(), "arch": clip.arch},
            "dataset": {"name": spec.name, "role": spec.role, "suite": suite.name, "n": res["n"]},
            "metrics": res,
            "config": config,
            "config_hash": h,
            "versions": package_versions(),
            "seed": cfg.seed,
            "wall_time_s": time.perf_counter() - start,
            "images_per_s": res["n"] / max(time.perf_counter() - start, 1e-9),
        }
        store.write(path, done)
        clear_state(state_dir)  # the result is stored: the attack's resume state is no longer needed
    m = done["metrics"]
    keep = ("attack", "attack_label", "eps", "eps_value", "norm", "n", "clean_acc", "robust_acc", "cascade", "config",
            "timings", "warnings")
    return {**{k: m[k] for k in keep if k in m}, "result_file": str(path)}
