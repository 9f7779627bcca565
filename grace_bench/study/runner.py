"""Run a study stage by stage: pretrain → fine-tune → WiSE-FT → evaluate → geometry → report.

Every stage skips what is already on disk, so a killed study resumes where it stopped: a finished
run has ``model.safetensors``, an unfinished one resumes from its last checkpoint (bit-identically),
evaluations and geometry skip finished result files. ``WORK/recipe.json`` pins the settings that
change numbers; resuming with other settings is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from grace_bench.errors import UserError
from grace_bench.study.parallel import run_jobs
from grace_bench.study.plan import Entry, finetune_config, wise_alphas, wise_dir
from grace_bench.study.recipe import WISE, ZERO_SHOT, StudyRecipe, read_study_json
from grace_bench.study.report import write_report
from grace_bench.study.state import StudyRun, accumulate_time, total_times
from grace_bench.utils.atomic import atomic_write_json
from grace_bench.utils.paths import check_writable_dir, ensure_writable_dir

STAGES = ("pretrain", "finetune", "wise", "eval", "geometry", "report")
# Under torchrun these run on rank 0 alone while the other ranks wait; finetune and eval run data-parallel.
MAIN_ONLY_STAGES = ("pretrain", "wise", "geometry", "report")


def check_recipe(work: Path, recipe: StudyRecipe) -> None:
    """Write ``WORK/recipe.json`` on the first run; refuse to resume a study made with other settings."""
    path = work / "recipe.json"
    current = recipe.identity()
    if path.is_file():
        fix = f"delete {path} (the study's settings record) or use another --work folder"
        saved = read_study_json(path, fix).get("identity")
        if not isinstance(saved, dict):
            raise UserError(f"{path} has no 'identity' object; {fix}")
        diff = sorted(k for k in set(saved) | set(current)
                      if json.dumps(saved.get(k), sort_keys=True) != json.dumps(current.get(k), sort_keys=True))
        if diff:
            raise UserError(f"{work} holds a study made with other settings ({diff[0]}: {saved.get(diff[0])!r} vs "
                            f"{current.get(diff[0])!r}); use another --work folder or delete it")
    atomic_write_json(path, {"identity": current, "recipe": recipe.to_dict()})


def run_study(run: StudyRun, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Run ``stages`` of the study in order; returns the report record (also written to ``OUT/study.json``).

    Under torchrun, fine-tuning and evaluation are data-parallel; the stages in ``MAIN_ONLY_STAGES`` and every
    study file are rank 0's, while the other ranks wait (``Runtime.main_writes``) and return an empty record.
    """
    from grace_bench.runtime import init_runtime

    runtime = init_runtime(run.device)  # joins the process group now, so only rank 0 writes the study's files
    check_writable_dir(run.out, "--out")  # a file or read-only folder fails before any stage runs
    ensure_writable_dir(run.work, "--work")
    total_times(run.work)  # a corrupt timings file fails now, not after the first stage's work
    with runtime.main_writes() as writer:
        if writer:
            check_recipe(run.work, run.recipe)
    steps: dict[str, Callable[[StudyRun], None]] = {
        "pretrain": _pretrain, "finetune": _finetune, "wise": _wise, "eval": _evaluate, "geometry": _geometry,
    }
    report: dict[str, Any] = {}
    for stage in stages:
        t0 = time.perf_counter()
        if runtime.is_main:
            run.log(f"== {stage}")
        with runtime.main_writes() if stage in MAIN_ONLY_STAGES else nullcontext(True) as runs_here:
            if runs_here and stage == "report":
                report = write_report(run)
            elif runs_here:
                steps[stage](run)
        run.timings[stage] = round(time.perf_counter() - t0, 1)
        if runtime.is_main:
            accumulate_time(run.work, stage, run.timings[stage])
    if report:  # the report was written before the report stage's own time was known: add the totals
        report["timings_total_s"] = total_times(run.work)
        atomic_write_json(run.out / "study.json", report)
    return report


def _pretrain(run: StudyRun) -> None:
    if run.recipe.base != "micro":
        run.log(f"base model {run.recipe.base}: nothing to pretrain")
        return
    from grace_bench.models.micro import SHIPPED_WEIGHTS

    run.log(f"micro-CLIP: shipped weights {SHIPPED_WEIGHTS}")


def _train_one(cfg: Any) -> str:
    """Train (or resume) one run; the line to log. Module-level so that ``--jobs`` workers can run it."""
    from grace_bench.finetune.trainer import train

    t0 = time.perf_counter()
    result = train(cfg)
    acc = "n/a" if result.val_acc is None else f"{result.val_acc:.3f}"
    return f"  {Path(cfg.out).name}: {result.step} steps in {time.perf_counter() - t0:.0f} s, val acc {acc}"


def _finetune(run: StudyRun) -> None:
    todo = []
    for entry in run.entries():
        out = entry.run_dir
        if not entry.spec.trains or (out / "model.safetensors").is_file():
            continue
        cfg = finetune_config(run.recipe, entry.spec, entry.seed, out, progress=False, device=run.device)
        cfg.resume = (out / "config.json").is_file()
        todo.append(cfg)
    jobs = run.jobs if run.device_is_cpu() else 1  # one accelerator: one run at a time
    for line in tqdm(run_jobs(_train_one, todo, jobs), total=len(todo), desc="fine-tune", unit="run",
                     disable=not run.progress):
        run.log(line)


def _wise(run: StudyRun) -> None:
    if WISE not in run.recipe.methods:
        return
    from grace_bench.finetune.wise import alpha_dirname, write_wise_runs
    from grace_bench.study.plan import run_dir

    for seed in run.recipe.seeds:
        alphas = [a for a in wise_alphas(run.recipe, seed)
                  if not (wise_dir(run.work, seed) / alpha_dirname(a) / "model.safetensors").is_file()]
        if alphas:
            write_wise_runs(run.recipe.base, str(run_dir(run.work, "ft", seed)), alphas, wise_dir(run.work, seed),
                            progress=False)


def _evaluate(run: StudyRun) -> None:
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.config import EvalConfig
    from grace_bench.eval.run import run_eval

    recipe = run.recipe
    workers = get_suite(recipe.suite).loader_workers
    configs = [EvalConfig(checkpoint=entry.checkpoint, suite=recipe.suite, data_root=_path(recipe.data_root),
                          attack=recipe.attack, eps=recipe.eps, n_adv=recipe.n_adv, limit=recipe.eval_limit,
                          out=run.results_dir, device=run.device, label=entry.label, progress=False,
                          workers=workers)
               for entry in run.entries()]
    jobs = run.jobs if run.device_is_cpu() else 1
    for _ in tqdm(run_jobs(run_eval, configs, jobs), total=len(configs), desc="evaluate", unit="ckpt",
                  disable=not run.progress):
        pass


def geometry_entries(run: StudyRun) -> list[Entry]:
    """The checkpoints that get geometry: the first ``recipe.geometry_seeds`` seeds of every main-group row (not
    the extra WiSE α's; zero-shot once)."""
    seeds = set(run.recipe.seeds[:max(1, run.recipe.geometry_seeds)])
    return [e for e in run.entries()
            if e.spec.group == "main" and e.seed in seeds and (e.alpha is None or e.label == WISE)]


def _geometry(run: StudyRun) -> None:
    """Every geometry job of the recipe through the library (``geometry.compute``: finished files are skipped);
    one checkpoint per job, ``run.jobs`` checkpoints at once."""
    from grace_bench.geometry.config import from_dict
    from grace_bench.geometry.registry import get_kind

    configs = {}
    for kind, settings in run.recipe.geometry.items():
        cls = get_kind(kind).config
        data = {"suite": run.recipe.suite, "data_root": run.recipe.data_root} if cls.NEEDS_DATA else {}
        configs[kind] = from_dict(cls, {**data, **settings}, where=f"study geometry '{kind}'")
        configs[kind].validate()
    jobs = []
    for entry in geometry_entries(run):
        kinds = [(kind, cfg) for kind, cfg in configs.items() if not (kind == "weights" and entry.label == ZERO_SHOT)]
        if kinds:
            jobs.append((entry.checkpoint, entry.label, kinds, run.recipe.base, run.geometry_dir, run.device))
    n = sum(len(j[2]) for j in jobs)
    with tqdm(total=n, desc="geometry", unit="job", disable=not run.progress) as bar:
        for done in run_jobs(_geometry_one, jobs, run.jobs if run.device_is_cpu() else 1):
            bar.update(done)


def _geometry_one(job: tuple[str, str, list[tuple[str, Any]], str, Path, str]) -> int:
    """Every geometry kind of one checkpoint (module-level: ``--jobs`` workers run it); returns the kinds done."""
    from grace_bench.geometry.api import compute
    from grace_bench.models.checkpoints import load_checkpoint
    from grace_bench.runtime import resolve_device

    checkpoint, label, kinds, base_spec, out, device_name = job
    device = resolve_device(device_name)
    model = load_checkpoint(checkpoint, device=device)
    base = None
    for kind, cfg in kinds:
        ref = None
        if cfg.ref_use() != "never":
            base = base or load_checkpoint(base_spec, device=device)
            ref = base
        compute(kind, model, cfg, out, ref=ref, label=label)
    return len(kinds)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
