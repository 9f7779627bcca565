"""Expand a recipe into the checkpoints a study produces: one ``Entry`` per (method, seed) and per WiSE-FT α."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grace_bench.finetune.config import FinetuneConfig
from grace_bench.finetune.wise import alpha_dirname
from grace_bench.study.recipe import WISE, ZERO_SHOT, MethodSpec, StudyRecipe


@dataclass(frozen=True)
class Entry:
    """One checkpoint of the study and where it lives."""

    label: str  # the row it belongs to (seeds share a label)
    seed: int
    spec: MethodSpec
    checkpoint: str  # checkpoint spec for eval/geometry (a run directory or the base spec)
    alpha: float | None = None  # WiSE-FT only

    @property
    def run_dir(self) -> Path | None:
        return None if self.spec.method == "" else Path(self.checkpoint)


def run_dir(work: Path, label: str, seed: int) -> Path:
    """Where the fine-tuning run of ``label`` with ``seed`` is written."""
    return work / "runs" / f"{label}-s{seed}"


def wise_dir(work: Path, seed: int) -> Path:
    """Where the WiSE-FT interpolations of the FT run with ``seed`` are written."""
    return work / "runs" / f"{WISE}-s{seed}"


def wise_alphas(recipe: StudyRecipe, seed: int) -> list[float]:
    """The α values interpolated for ``seed``: the study's α for every seed, the whole curve for the first."""
    alphas = {recipe.wise_alpha}
    if seed == recipe.seeds[0]:
        alphas |= {a for a in recipe.wise_curve if 0 < a < 1}
    return sorted(alphas)


def wise_label(recipe: StudyRecipe, alpha: float) -> str:
    """The row label of one α (the study's α is the WiSE-FT row; the others only draw the curve)."""
    return WISE if alpha == recipe.wise_alpha else f"{WISE} α={alpha:g}"


def entries(recipe: StudyRecipe, work: Path) -> list[Entry]:
    """Every checkpoint of the study, in training order (zero-shot first, WiSE-FT after its FT run)."""
    out: list[Entry] = []
    for spec in recipe.specs():
        seeds = recipe.seeds_for(spec)
        if spec.label == ZERO_SHOT:
            out.append(Entry(ZERO_SHOT, recipe.seeds[0], spec, recipe.base))
        elif spec.method == "wise":
            for seed in seeds:
                for alpha in wise_alphas(recipe, seed):
                    path = wise_dir(work, seed) / alpha_dirname(alpha)
                    out.append(Entry(wise_label(recipe, alpha), seed, spec, str(path), alpha))
        else:
            out.extend(Entry(spec.label, seed, spec, str(run_dir(work, spec.label, seed))) for seed in seeds)
    return out


def finetune_config(recipe: StudyRecipe, spec: MethodSpec, seed: int, out: Path, *, lr: float | None = None,
                    knobs: dict[str, Any] | None = None, progress: bool = True, device: str = "auto") -> FinetuneConfig:
    """The trainer config of ``spec`` with ``seed`` under the recipe's shared budget.

    Method arguments, later ones winning: the tuned knobs (``knobs``, else the recipe's for this row or the row
    it takes its lr from), the row's own ``method_args`` (what makes it this variant), the shared threat model.
    """
    from grace_bench.data.suites import get_suite

    if knobs is None:
        knobs = recipe.knobs.get(spec.label, recipe.knobs.get(spec.lr_from or "", {}))
    method_args = {**knobs, **dict(spec.method_args)}
    if spec.adversarial:
        method_args.update(eps=recipe.train_eps, pgd_steps=recipe.train_pgd_steps,
                           pgd_step_size=recipe.train_pgd_step_size)
    return FinetuneConfig(
        method=spec.method, base=recipe.base, suite=recipe.suite, out=str(out), data_root=recipe.data_root,
        max_steps=recipe.steps, batch_size=recipe.batch_size, warmup_steps=recipe.warmup_steps,
        lr=lr if lr is not None else recipe.lr.get(spec.label, recipe.lr.get(spec.lr_from or "")), seed=seed,
        lora_rank=spec.lora_rank,
        save_every=recipe.save_every, eval_every=0, val_max_samples=256,
        num_workers=get_suite(recipe.suite).loader_workers,
        progress=progress, device=device, method_args=method_args,
    )
