"""`grace-bench eval`: clean accuracy on every suite dataset, the adversarial axis, aggregates, one summary.

Every argument is checked (and ``--out`` made writable) before any data or model is loaded. Each
(checkpoint fingerprint, dataset, kind, config hash) result is a JSON file; a rerun skips finished files,
a killed run resumes from the saved partial state (removed once the result is written), and a second
process evaluating into the same folder waits for the first and reuses its result (per-result locks).
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from grace_bench.attacks.chunks import DEFAULT_CHUNK_SIZE
from grace_bench.data.image_folders import MissingDatasetError
from grace_bench.data.suites import DataContext, DatasetSpec
from grace_bench.data.wds_shards import rank_share
from grace_bench.errors import UserError
from grace_bench.eval.batching import auto_workers
from grace_bench.eval.clean import evaluate_clean
from grace_bench.eval.config import EvalConfig
from grace_bench.eval.context import classifier_for
from grace_bench.eval.labels import evaluated_as, identity_of, merged_identity
from grace_bench.eval.plan import (  # noqa: F401 - read_text_list/default_suite_for are part of this module's API
    EvalPlan,
    adv_indices_for,
    adv_subset,
    adversarial_names,
    default_suite_for,
    plan_eval,
    read_text_list,
    selected_datasets,
)
from grace_bench.eval.store import ResultStore, package_versions
from grace_bench.eval.summary import PROTOCOL_VERSION, build_summary, read_existing
from grace_bench.models.clip_model import ClipModel
from grace_bench.results.writer import write_record
from grace_bench.runtime import Runtime, init_runtime, resolve_device  # noqa: F401 - resolve_device: API
from grace_bench.utils.hashing import config_hash, text_list_hash


def run_eval(cfg: EvalConfig, clip: ClipModel | None = None) -> dict[str, Any]:
    """Run the whole evaluation described by ``cfg`` and return the summary dict (also written to disk).

    The summary merges every finished result of the checkpoint in ``cfg.out``; see ``grace_bench.eval.summary``.
    """
    from grace_bench.models.checkpoints import load_checkpoint

    runtime = init_runtime(cfg.device)  # under torchrun: cuda:LOCAL_RANK and the process group
    device, rank, world = runtime.device, runtime.rank, runtime.world_size
    plan = plan_eval(cfg, clip)
    cfg = replace(cfg, checkpoint=plan.checkpoint)  # None: the suite's default model
    if clip is None:
        clip = load_checkpoint(cfg.checkpoint, base=cfg.base, trust_pickle=cfg.trust_pickle)
    clip.model.to(device).eval()
    if plan.suite is None:  # the spec did not tell the architecture: check what depends on the suite now
        cfg_known = replace(cfg, suite=default_suite_for(clip))
        plan = plan_eval(cfg_known, clip)
    cfg = replace(cfg, seed=plan.seed)  # the protocol's seed unless one was given
    suite = plan.suite
    templates, classnames = plan.templates, plan.classnames
    ctx = DataContext(root=cfg.data_root, preprocess=clip.preprocess, image_size=clip.image_size,
                      allow_empty_classes=cfg.allow_empty_classes, layout=cfg.data_layout)
    store = ResultStore(cfg.out)
    fp = clip.fingerprint()
    prompt_key = {"templates": text_list_hash(templates), "classnames": text_list_hash(classnames)}

    specs = selected_datasets(suite, cfg)
    adv_names = adversarial_names(suite, cfg) if plan.attack_kind != "none" else []
    loaded = load_selected(suite, specs, ctx, cfg, rank)
    adv_subsets = {spec.name: adv_subset(plan, suite, spec, ds, cfg.limit)
                   for spec, ds in loaded if spec.name in adv_names}
    current: dict[tuple, Path] = {}
    prompt_keys: dict[str, dict[str, str]] = {}
    for spec, dataset in loaded:
        names, temps = dataset_prompts(spec, ctx, cfg, plan)
        key = {"templates": text_list_hash(temps), "classnames": text_list_hash(names)}
        prompt_keys[spec.name] = key
        clf = classifier_for(clip, suite, spec, temps, names, device=device, progress=cfg.progress)
        current["clean", spec.name] = _clean_result(cfg, store, clip, suite, spec, dataset, clf, key, plan, runtime)
        if spec.name in adv_names:
            indices, n = adv_subsets[spec.name]
            for eps in plan.eps_list:
                path = _adversarial_result(cfg, store, clip, suite, spec, dataset, clf, key, plan, eps, n, indices,
                                           device, rank, world)
                current["adversarial", spec.name, eps] = path
                if eps == plan.eps_list[0]:
                    current["adversarial", spec.name] = path
    for spec in suite.datasets:  # the summary also merges earlier results of datasets not run now
        if spec.prompts is not None and spec.name not in prompt_keys:
            prompt_keys[spec.name] = _prompt_key_if_known(spec, ctx, cfg, plan)
    runtime.barrier()

    summary_path = store.summary_path(fp, _family(plan))
    with store.lock(summary_path, quiet=True) if rank == 0 else nullcontext():
        existing = read_existing(summary_path)
        identity = merged_identity(identity_of(clip, cfg.label), existing)
        summary = build_summary(store, fingerprint=fp, suite=suite, identity=identity,
                                specs_seen=evaluated_as(clip.spec, existing), current=current, prompt_key=prompt_key,
                                n_templates=len(templates),
                                requested={"attack": plan.attack, "eps": plan.eps, "norm": plan.norm,
                                           "n_adv": plan.n_adv, "precision": cfg.precision, "limit": cfg.limit,
                                           "seed": cfg.seed},
                                protocol=_protocol_record(plan), prompt_keys=prompt_keys)
        if rank == 0:
            summary = write_record(summary_path, summary, kind="summary")
    return summary


def dataset_prompts(spec: DatasetSpec, ctx: DataContext, cfg: EvalConfig, plan: EvalPlan) -> tuple[list[str],
                                                                                                     list[str]]:
    """(class names, templates) of one dataset: its own prompts (zero-shot suites) else the suite's; a templates
    file or a preset's templates replace the templates of every dataset."""
    if spec.prompts is None:
        return list(plan.classnames), list(plan.templates)
    names, temps = spec.prompts(ctx)
    if cfg.templates_file is not None or (plan.protocol is not None and plan.protocol.preset.templates):
        temps = plan.templates
    return list(names), list(temps)


def _prompt_key_if_known(spec: DatasetSpec, ctx: DataContext, cfg: EvalConfig, plan: EvalPlan) -> dict | None:
    """The prompt hashes of a dataset not evaluated in this run, read from its folder if it is there; None (the
    summary then takes its newest result of this protocol, whatever its prompts) when they cannot be read."""
    try:
        names, temps = dataset_prompts(spec, ctx, cfg, plan)
    except UserError:
        return None
    return {"templates": text_list_hash(temps), "classnames": text_list_hash(names)}


def _family(plan: EvalPlan) -> str | None:
    """The summary's protocol group (None: grace, whose summary keeps its name)."""
    return _summary_family(plan.protocol.family if plan.protocol is not None else None)


def _summary_family(family: str | None) -> str | None:
    return None if family in (None, "grace") else family


def _protocol_record(plan: EvalPlan, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's protocol record, or (``config`` given) that of the one result ``config`` describes: a result
    records only the settings it depends on, so its record is the same whichever run wrote it."""
    if plan.protocol is None:
        return {}
    if config is None:
        return plan.protocol.record(plan.settings())
    settings = plan.settings()
    if "attack" in config:
        effective = {**settings, "eps": config["eps"], "n": config["n"]}
        effective.pop("n_adv", None)
        effective.pop("n_adv_for", None)
        return plan.protocol.for_result("adversarial", config["eps"]).record(effective)
    return plan.protocol.for_result("clean").record({"templates": settings["templates"]})


def _tagged(config: dict[str, Any], plan: EvalPlan) -> dict[str, Any]:
    """``config`` with its result's protocol tag hashed in (none for grace-family results: same files as before)."""
    if plan.protocol is None:
        return config
    kind = "adversarial" if "attack" in config else "clean"
    tag = plan.protocol.for_result(kind, config.get("eps")).tag
    return {**config, "preset": tag} if tag else config


def summary_location(cfg: EvalConfig, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Where ``run_eval`` wrote ``summary``: the summary file and the checkpoint's results folder."""
    store = ResultStore(cfg.out)
    fp = summary["checkpoint"]["fingerprint"]
    family = _summary_family((summary.get("protocol") or {}).get("family"))
    return store.summary_path(fp, family), store.results_dir(fp)


def load_selected(suite, specs: list[DatasetSpec], ctx: DataContext, cfg: EvalConfig, rank: int = 0) -> list[tuple]:
    """``(spec, dataset)`` of every selected dataset found; an optional one absent from the data root is skipped
    (one notice line on stderr) unless it was named with ``datasets`` (--datasets). Any other data error (a broken
    folder, a corrupt shard) stops the run; so does a root holding none of the selected datasets."""
    named = set(cfg.datasets or ())
    loaded, missing = [], []
    for spec in specs:
        dataset = _load_dataset(spec, ctx, required=spec.name in named)
        if dataset is None:
            missing.append(spec.name)
        else:
            loaded.append((spec, dataset))
    if missing and not loaded:
        raise UserError(f"none of the {len(specs)} selected datasets of suite '{suite.name}' is under "
                        f"{cfg.data_root}; put at least one there (layouts: docs/zero-shot-data.md) or check "
                        "data_root (--data-root)")
    if missing and rank == 0:
        print(f"notice: skipped {len(missing)} dataset(s) not found under {cfg.data_root}: {', '.join(missing)} "
              "(name one with --datasets to require it)", file=sys.stderr, flush=True)
    return loaded


def _load_dataset(spec: DatasetSpec, ctx: DataContext, required: bool = False):
    """``spec``'s dataset; None only for an optional, not required dataset whose folder is missing."""
    try:
        return spec.load(ctx)
    except MissingDatasetError:
        if spec.optional and not required:
            return None
        raise


def _clean_result(cfg, store, clip, suite, spec, dataset, clf, prompt_key, plan: EvalPlan, runtime: Runtime) -> Path:
    device, rank, world = runtime.device, runtime.rank, runtime.world_size
    n_total = len(dataset)
    n = n_total if cfg.limit is None else min(cfg.limit, n_total)
    config = _tagged({"protocol": PROTOCOL_VERSION, "suite": suite.name, "dataset": spec.name, "n": n,
                      "precision": cfg.precision, **prompt_key}, plan)
    h = config_hash(config)
    fp = clip.fingerprint()
    path = store.result_path(fp, spec.name, "clean", h)
    if store.load(path) is not None:
        return path
    # one process computes each result; under DDP the ranks share the work instead (no lock: they must all run)
    with store.lock(path) if world == 1 else nullcontext():
        if store.load(path) is not None:  # another process finished it while we waited
            return path
        partial = store.state_dir(fp, spec.name, "clean", h) / f"rank{rank}of{world}.json"
        start = time.perf_counter()
        metrics = evaluate_clean(
            clf, dataset, rank_share(dataset, range(n), runtime.rank, runtime.world_size), batch_size=cfg.batch_size,
            precision=cfg.precision, device=device, num_workers=auto_workers(cfg.workers, suite.loader_workers),
            partial_path=partial, partial_key=h, runtime=runtime,
            progress=cfg.progress and rank == 0, desc=spec.name, flag_order=range(n),
        )
        wall = time.perf_counter() - start
        if hasattr(dataset, "report"):  # image folders: counts of unreadable / skipped files
            metrics["data_report"] = dataset.report()
        done = {
            "kind": "clean",
            "checkpoint": {"spec": clip.spec, "fingerprint": fp, "arch": clip.arch},
            "dataset": {"name": spec.name, "role": spec.role, "suite": suite.name, "n": metrics["n"],
                        "classes": clf.num_classes},
            "metrics": {k: v for k, v in metrics.items() if k != "forward_seconds"},
            "config": {**config, "batch_size": cfg.batch_size, "device": str(device), "world_size": world,
                       "limit": cfg.limit},
            "config_hash": h,
            "versions": package_versions(),
            "seed": cfg.seed,
            "wall_time_s": wall,
            "images_per_s": metrics["n"] / max(metrics["forward_seconds"], 1e-9),
            "protocol_preset": _protocol_record(plan, config),
        }
        if rank == 0:
            store.write(path, done)
            store.clear_state(fp, spec.name, "clean", h)
    return path


def _adversarial_result(cfg, store, clip, suite, spec, dataset, clf, prompt_key, plan, eps, n, indices, device,
                        rank, world) -> Path:
    """The adversarial result of one dataset; under torchrun every rank attacks its share of the chunks.

    In one process the per-result lock is held around the attack, so a second process waits and reuses the
    result. Under torchrun rank 0 decides for all ranks whether the result exists, every rank attacks its
    chunks, and rank 0 alone writes, taking the lock only for the write and never waiting for it (a rank
    blocked on a lock while the others sit in a collective would time out the group).
    """
    config = _tagged({"protocol": PROTOCOL_VERSION, "suite": suite.name, "dataset": spec.name, "attack": plan.attack,
                      "eps": eps, "norm": cfg.norm, "n": n, "seed": cfg.seed, "chunk_size": DEFAULT_CHUNK_SIZE,
                      **prompt_key}, plan)
    h = config_hash(config)
    fp = clip.fingerprint()
    path = store.result_path(fp, spec.name, "adversarial", h)
    if world == 1:
        if store.load(path) is not None:
            return path
        with store.lock(path):
            if store.load(path) is None:  # else another process finished it while we waited
                store.write(path, _attack(cfg, store, clip, suite, spec, dataset, clf, plan, indices, config, h,
                                          device, 0, 1))
                store.clear_state(fp, spec.name, "adversarial", h)  # the result is stored: its resume state goes
        return path
    from grace_bench.attacks.sharding import rank0_decides

    if rank0_decides(store.load(path) is not None if rank == 0 else False, world, device):
        return path
    record = _attack(cfg, store, clip, suite, spec, dataset, clf, plan, indices, config, h, device, rank, world)
    if rank == 0:
        lock = store.lock(path, quiet=True)
        mine = lock.acquire(blocking=False)
        try:
            store.write(path, record)  # atomic; a concurrent writer of this result writes the same flags
            if mine:  # a busy lock means another process may still need the resume state
                store.clear_state(fp, spec.name, "adversarial", h)
        finally:
            lock.release()
    return path


def _attack(cfg, store, clip, suite, spec, dataset, clf, plan, indices, config, h, device, rank, world) -> dict:
    """Attack the dataset's subset (this rank's chunks under torchrun) and build the result record."""
    from grace_bench.attacks.evaluate import evaluate_adversarial

    fp = clip.fingerprint()
    start = time.perf_counter()
    res = evaluate_adversarial(
        clf, dataset, attack=plan.attack, eps=config["eps"], norm=cfg.norm, n=config["n"],
        batch_size=cfg.adv_batch_size, chunk_size=DEFAULT_CHUNK_SIZE,
        state_dir=store.state_dir(fp, spec.name, "adversarial", h), seed=cfg.seed, indices=indices,
        progress=cfg.progress and rank == 0, num_workers=auto_workers(cfg.workers, suite.loader_workers),
        rank=rank, world=world,
    )
    wall = time.perf_counter() - start
    return {
        "kind": "adversarial",
        "checkpoint": {"spec": clip.spec, "fingerprint": fp, "arch": clip.arch},
        "dataset": {"name": spec.name, "role": spec.role, "suite": suite.name, "n": res["n"]},
        "metrics": res,
        # world_size and chunks_by_rank are not hashed: the result is the same for every world size
        "config": {**config, "world_size": world, "chunks_by_rank": res["timings"]["chunks_by_rank"]},
        "config_hash": h,
        "versions": package_versions(),
        "seed": cfg.seed,
        "wall_time_s": wall,
        "images_per_s": res["n"] / max(wall, 1e-9),
        "protocol_preset": _protocol_record(plan, config),
    }
