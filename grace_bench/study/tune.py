"""Choose each method's learning rate on the validation split (never on a test set).

For every trainable row of the study, train the first seed at each lr of a grid under the study's
budget, then score it on the suite's ``val`` split: clean zero-shot top-1 for the clean methods, and
the harmonic mean of clean and PGD-10 robust top-1 (the study's ε) for the adversarial ones. The
best lr per method goes to ``tuning.json``; the GRACE ablations are not tuned but keep GRACE's lr, so
each row changes one component only; ``micro_lr.json`` in this package is such a file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from grace_bench.errors import UserError
from grace_bench.study.plan import finetune_config
from grace_bench.study.recipe import MethodSpec, StudyRecipe, read_study_json
from grace_bench.utils.atomic import atomic_write_json

FULL_FT_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LORA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
VAL_MAX = 256


def lr_grid(spec: MethodSpec) -> tuple[float, ...]:
    """The grid searched for ``spec``: LoRA methods train few parameters and take larger steps."""
    uses_lora = spec.lora_rank is None or spec.lora_rank > 0  # None = the method default (GRACE: LoRA 64)
    return LORA_GRID if uses_lora else FULL_FT_GRID


def validation_scores(run_dir: Path, recipe: StudyRecipe, device: str = "cpu") -> dict[str, float]:
    """Clean and PGD-10 robust top-1 of a finished run on the first ``VAL_MAX`` val images."""
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
    n = min(VAL_MAX, len(val))
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


def tune(recipe: StudyRecipe, work: Path, *, progress: bool = True, device: str = "auto") -> dict[str, Any]:
    """Run the lr grid of every trainable method (first seed); return and write ``WORK/tuning.json``."""
    from grace_bench.finetune.trainer import train
    from grace_bench.runtime import resolve_device

    seed = recipe.seeds[0]
    specs = [s for s in recipe.specs() if s.trains and s.lr_from is None]  # ablations reuse GRACE's lr
    jobs = [(s, lr) for s in specs for lr in lr_grid(s)]
    trials: dict[str, list[dict[str, Any]]] = {}
    dev = str(resolve_device(device))
    for spec, lr in tqdm(jobs, desc="tune lr", unit="run", disable=not progress):
        out = work / "tune" / f"{spec.label}-lr{lr:g}"
        if not (out / "model.safetensors").is_file():
            cfg = finetune_config(recipe, spec, seed, out, lr=lr, progress=False, device=device)
            cfg.resume = (out / "config.json").is_file()
            t0 = time.perf_counter()
            train(cfg)
            took = time.perf_counter() - t0
        else:
            took = None
        cached = out / "val_scores.json"
        if cached.is_file():
            scores = read_study_json(cached, "delete it to score that run again")
            if not all(isinstance(scores.get(k), (int, float)) for k in ("val_clean", "val_robust", "val_hm")):
                raise UserError(f"{cached} lacks numeric val_clean/val_robust/val_hm; delete it to score that run "
                                "again")
        else:
            scores = validation_scores(out, recipe, device=dev)
            atomic_write_json(cached, scores)
        trials.setdefault(spec.label, []).append({"lr": lr, **scores, "train_s": took})
    selected = {}
    for spec in specs:
        key = "val_hm" if spec.adversarial else "val_clean"
        best = max(trials[spec.label], key=lambda t: (t[key], -t["lr"]))
        grid = lr_grid(spec)
        selected[spec.label] = {"lr": best["lr"], "criterion": key, "score": best[key],
                                "at_grid_edge": best["lr"] in (grid[0], grid[-1])}
    record = {
        "schema": "grace-bench/tuning/v1", "suite": recipe.suite, "seed": seed,
        "criterion": "clean methods: val clean top-1; adversarial methods: HM(val clean, val PGD-10 robust at "
                     f"ε {recipe.eps}); ties go to the smaller lr",
        "budget": {k: getattr(recipe, k) for k in ("steps", "batch_size", "warmup_steps", "train_eps",
                                                     "train_pgd_steps", "train_pgd_step_size")},
        "grids": {s.label: list(lr_grid(s)) for s in specs}, "trials": trials, "selected": selected,
    }
    atomic_write_json(work / "tuning.json", record)
    return record
