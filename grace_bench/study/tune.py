"""Tune every method's own knobs on the validation split (never on a test set), on an equal budget.

Every tuned row of the study trains the first seed ``trials`` times (default ``search_space.TRIALS``) under the
study's budget, at settings drawn from its search space (``search_space.py``: lr for all, plus the method's own
knobs), and each run is scored on the suite's ``val`` split: clean zero-shot top-1 for the clean methods, and
the harmonic mean of clean and PGD-10 robust top-1 (the study's ε) for the adversarial ones. The best trial per
row goes to ``WORK/tuning.json`` with every trial; ``micro_tuning.json`` in this package is such a file. Rows
with ``lr_from`` (the GRACE ablations) are not tuned but take that row's choices, so each changes one component.

Trials are cached under ``WORK/tune/LABEL/`` (a folder per trial, named by its settings), so a killed tuning
resumes; the same seed gives the same trials in the same order, hence the same choices.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from grace_bench.errors import UserError
from grace_bench.study.parallel import run_jobs
from grace_bench.study.plan import finetune_config
from grace_bench.study.recipe import MethodSpec, StudyRecipe, read_study_json
from grace_bench.study.search_space import SEARCH_SEED, TRIALS, best_trial, space_for, trial_points
from grace_bench.utils.atomic import atomic_write_json

SCHEMA = "grace-bench/tuning/v2"
VAL_MAX = 256
SCORE_KEYS = ("val_clean", "val_robust", "val_hm")


def tuned_specs(recipe: StudyRecipe) -> list[MethodSpec]:
    """The rows that get their own trials: every trainable row that does not borrow another row's choices, and
    the rows those borrow from (tuning an ablation alone tunes GRACE)."""
    from grace_bench.study.recipe import method_spec

    specs = recipe.specs()
    wanted = {s.label for s in specs if s.trains and s.lr_from is None}
    wanted |= {s.lr_from for s in specs if s.trains and s.lr_from}
    return [method_spec(label) for label in dict.fromkeys([*(s.label for s in specs), *sorted(wanted)])
            if label in wanted]


def spec_space(spec: MethodSpec):
    return space_for(spec.method, spec.lora_rank, dict(spec.method_args))


def plan_trials(recipe: StudyRecipe, trials: int = TRIALS, seed: int = SEARCH_SEED) -> dict[str, list[dict]]:
    """Per tuned row, its ``trials`` settings in order: ``{"index", "lr", "method_args"}``."""
    plan = {}
    for spec in tuned_specs(recipe):
        points = trial_points(spec_space(spec), trials, seed=seed, key=spec.label)
        plan[spec.label] = [{"index": i, "lr": p.pop("lr"), "method_args": p} for i, p in enumerate(points)]
    return plan


def trial_dir(work: Path, label: str, trial: dict[str, Any]) -> Path:
    """``WORK/tune/LABEL/tNN-HASH``: the hash of the settings keeps a changed space from reusing a stale run."""
    key = json.dumps({"lr": trial["lr"], "method_args": trial["method_args"]}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return work / "tune" / label / f"t{trial['index']:02d}-{digest}"


def validation_scores(run_dir: Path, recipe: StudyRecipe, device: str = "cpu", val_max: int | None = None
                      ) -> dict[str, float]:
    """Clean and PGD-10 robust top-1 of a finished run on the first ``val_max`` (default ``VAL_MAX``) val images."""
    from grace_bench.attacks.pgd import pgd_attack
    from grace_bench.attacks.threat import parse_eps
    from grace_bench.data.suites import DataContext, get_suite
    from grace_bench.eval.context import classifier_for
    from grace_bench.models.checkpoints import load_checkpoint

    clip = load_checkpoint(str(run_dir), device=device)
    suite = get_suite(recipe.suite)
    ctx = DataContext(root=Path(recipe.data_root) if recipe.data_root else None, preprocess=clip.preprocess,
                      image_size=clip.image_size)
    try:
        val = suite.train_split(ctx, "val")
    except UserError as exc:
        raise UserError(f"suite '{recipe.suite}' has no val split to tune on ({exc}); pass --lr-file instead") from exc
    n = min(VAL_MAX if val_max is None else val_max, len(val))
    xs, ys = zip(*(val[i] for i in range(n)))
    x, y = torch.stack(xs).to(device), torch.as_tensor(ys).to(device)
    clf = classifier_for(clip, suite, device=device)
    with torch.no_grad():
        clean = (clf(x).argmax(1) == y).float().mean().item()
    eps = parse_eps(recipe.eps)
    x_adv = pgd_attack(clf, x, y, eps=eps, steps=10, step_size=eps / 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust = (clf(x_adv).argmax(1) == y).float().mean().item()
    hm = 0.0 if min(clean, robust) <= 0 else 2 / (1 / clean + 1 / robust)
    return {"val_clean": clean, "val_robust": robust, "val_hm": hm, "n": n}


def _run_trial(job: tuple[StudyRecipe, MethodSpec, int, dict[str, Any], Path, str, int]) -> dict[str, Any]:
    """Train one trial (or resume it) and score it; cached in its folder. Module-level: runs in workers too."""
    from grace_bench.finetune.trainer import train
    from grace_bench.runtime import resolve_device

    recipe, spec, seed, trial, out, device, val_max = job
    cached = out / "val_scores.json"
    took = None
    if not (out / "model.safetensors").is_file():
        cfg = finetune_config(recipe, spec, seed, out, lr=trial["lr"], knobs=trial["method_args"], progress=False,
                              device=device)
        cfg.resume = (out / "config.json").is_file()
        t0 = time.perf_counter()
        train(cfg)
        took = round(time.perf_counter() - t0, 1)
    if cached.is_file():
        scores = read_study_json(cached, "delete it to score that run again")
        if not all(isinstance(scores.get(k), (int, float)) for k in SCORE_KEYS):
            raise UserError(f"{cached} lacks numeric val_clean/val_robust/val_hm; delete it to score that run again")
    else:
        scores = validation_scores(out, recipe, device=str(resolve_device(device)), val_max=val_max)
        atomic_write_json(cached, scores)
    return {**trial, **{k: scores[k] for k in (*SCORE_KEYS, "n")}, "train_s": took}


def tune(recipe: StudyRecipe, work: Path, *, trials: int = TRIALS, seed: int = SEARCH_SEED, jobs: int = 1,
         progress: bool = True, device: str = "auto") -> dict[str, Any]:
    """Run every tuned row's trials (first training seed); return and write ``WORK/tuning.json``."""
    from grace_bench.runtime import read_launch, resolve_device

    if read_launch().distributed or resolve_device(device).type != "cpu":
        jobs = 1  # worker processes share CPU cores; an accelerator takes one run at a time
    train_seed = recipe.seeds[0]
    specs = {s.label: s for s in tuned_specs(recipe)}
    plan = plan_trials(recipe, trials, seed)
    todo = [(recipe, specs[label], train_seed, t, trial_dir(work, label, t), device, VAL_MAX)
            for label, ts in plan.items() for t in ts]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in plan}
    bar = tqdm(total=len(todo), desc=f"tune ({trials} trials per method)", unit="run", disable=not progress)
    for job, result in zip(todo, run_jobs(_run_trial, todo, jobs)):
        results[job[1].label].append(result)
        bar.update(1)
    bar.close()
    record = {
        "schema": SCHEMA, "suite": recipe.suite, "seed": train_seed,
        "search": {"kind": "seeded Latin-hypercube random search (grace_bench/study/search_space.py)",
                   "seed": seed, "trials_per_method": trials},
        "criterion": "clean methods: val clean top-1; adversarial methods: HM(val clean, val PGD-10 robust at "
                     f"ε {recipe.eps}); ties go to the smaller lr, then the earlier trial",
        "budget": {k: getattr(recipe, k) for k in ("steps", "batch_size", "warmup_steps", "train_eps",
                                                     "train_pgd_steps", "train_pgd_step_size")},
        "spaces": {label: [k.to_dict() for k in spec_space(spec)] for label, spec in specs.items()},
        "trials": results, "selected": select(specs, results),
    }
    atomic_write_json(work / "tuning.json", record)
    return record


def select(specs: dict[str, MethodSpec], results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per row, the best trial by its criterion (``search_space.best_trial``) and where it lies in the space."""
    selected = {}
    for label, spec in specs.items():
        key = "val_hm" if spec.adversarial else "val_clean"
        best = best_trial(results[label], key)
        selected[label] = {"lr": best["lr"], "method_args": dict(best["method_args"]), "criterion": key,
                           "score": best[key], "trial": best["index"]}
    return selected
