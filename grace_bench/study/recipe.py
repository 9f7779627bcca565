"""What a study runs: the method catalogue, the shared training budget, the evaluation protocol and
the geometry settings. ``study_recipe`` builds the default (or ``--quick``) recipe for a suite.

Every method of a study trains with the same budget (steps, batch, warm-up, seeds) and, for the
adversarial ones, the same threat model; the learning rate and each method's own knobs differ, chosen
on the validation split with the same number of trials per method by ``grace-bench compare --tune``
(the micro choices are shipped in ``micro_tuning.json``; ``micro_lr.json`` holds the older lr-only sweep).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from grace_bench.errors import UserError

ZERO_SHOT = "zero-shot"
WISE = "wise-ft"
LR_ONLY_FILE = Path(__file__).with_name("micro_lr.json")  # the first, lr-only tuning (schema v1)
TUNING_FILE = Path(__file__).with_name("micro_tuning.json")  # equal-budget tuning of lr and knobs (schema v2)
GRACE_SPEC_DEFAULTS = (("lambda_gv", 1.0), ("lambda_lar", 1.0), ("awp_rho", 5e-3))


@dataclass(frozen=True)
class MethodSpec:
    """One row of the study: a trainer method plus the settings that make it this variant."""

    label: str
    method: str  # trainer method name; "" for the zero-shot model, "wise" for WiSE-FT
    group: str  # main | recent (2024-26 baselines) | lora | ablation
    description: str
    lora_rank: int | None = None  # None: the method's default (GRACE: 64); 0: full fine-tuning
    method_args: tuple[tuple[str, Any], ...] = ()
    adversarial: bool = False  # trains on PGD examples (gets the shared threat model)
    all_seeds: bool = True  # False: trained on the first seed only (budget)
    lr_from: str | None = None  # an ablation keeps the full method's tuned lr: one change at a time

    @property
    def trains(self) -> bool:
        return self.method not in ("", "wise")


CATALOGUE: tuple[MethodSpec, ...] = (
    MethodSpec(ZERO_SHOT, "", "main", "the pretrained model, no fine-tuning"),
    MethodSpec("ft", "ft", "main", "end-to-end CE with the zero-shot head", lora_rank=0),
    MethodSpec(WISE, "wise", "main", "WiSE-FT: (1-α)·θ0 + α·θ_ft, α = 0.5"),
    MethodSpec("flyp", "flyp", "main", "contrastive fine-tuning against class-prompt captions", lora_rank=0),
    MethodSpec("tecoa", "tecoa", "main", "CE on PGD images vs the frozen text head", lora_rank=0, adversarial=True),
    MethodSpec("fare", "fare", "main", "unsupervised embedding-matching adversarial loss", lora_rank=0,
               adversarial=True),
    MethodSpec("pmg-aft", "pmg-aft", "main", "TeCoA + KL to the pretrained and to the clean outputs", lora_rank=0,
               adversarial=True),
    MethodSpec("grace", "grace", "main", "LoRA + LAR-AWP with curvature curriculum + Gram-volume loss",
               adversarial=True),
    MethodSpec("grace-default", "grace", "main", "GRACE at the spec defaults λ_GV = λ_LAR = 1, ρ = 5e-3 (lr tuned)",
               method_args=GRACE_SPEC_DEFAULTS, adversarial=True),
    MethodSpec("sim-clip", "sim-clip", "recent", "Sim-CLIP: FARE with -cos to the frozen clean embedding, "
               "momentum PGD", lora_rank=0, adversarial=True, all_seeds=True),
    MethodSpec("advclip-lora", "advclip-lora", "recent", "AdvCLIP-LoRA: LoRA r=2 on q/k/v of both towers, CE on a "
               "universal perturbation", lora_rank=2, adversarial=True, all_seeds=True),
    MethodSpec("laat", "laat", "recent", "LAAT (CLIP adaptation): CE to expanded text anchors + clean/adv cosine",
               lora_rank=0, adversarial=True, all_seeds=True),
    MethodSpec("tga-zsr", "tga-zsr", "recent", "TeCoA + text-guided attention-map alignment to the frozen model",
               lora_rank=0, adversarial=True, all_seeds=True),
    MethodSpec("agft", "agft", "recent", "soft CE of adversarial predictions to the frozen model's tempered ones",
               lora_rank=0, adversarial=True, all_seeds=True),
    MethodSpec("ft-lora", "ft", "lora", "FT with LoRA rank 64 (Table 7)", lora_rank=64, all_seeds=False),
    MethodSpec("tecoa-lora", "tecoa", "lora", "TeCoA with LoRA rank 64 (Table 7)", lora_rank=64, adversarial=True,
               all_seeds=False),
    MethodSpec("grace-lora-ft", "grace", "ablation", "Table 8 row 1: LoRA, task loss only, no PGD",
               method_args=(("ablation", "lora-ft"),), adversarial=True, all_seeds=False, lr_from="grace"),
    MethodSpec("grace-gv", "grace", "ablation", "Table 8 row 2: + Gram-volume loss (clean, adversarial)",
               method_args=(("ablation", "gv"),), adversarial=True, all_seeds=False,
               lr_from="grace"),
    MethodSpec("grace-awp-uniform", "grace", "ablation", "Table 8 row 3: + LAR-AWP at a uniform rank",
               method_args=(("ablation", "awp-uniform"),), adversarial=True, all_seeds=False,
               lr_from="grace"),
    MethodSpec("grace-awp-curriculum", "grace", "ablation", "Table 8 row 4: + LAR-AWP with the curvature curriculum",
               method_args=(("ablation", "awp-curriculum"),), adversarial=True, all_seeds=False,
               lr_from="grace"),
)
BY_LABEL = {m.label: m for m in CATALOGUE}
QUICK_METHODS = (ZERO_SHOT, "ft", WISE, "tecoa", "grace", "grace-gv")
DEFAULT_SEEDS = 5


def method_spec(label: str) -> MethodSpec:
    """The catalogue entry called ``label``; a one-line error lists the known ones."""
    if label not in BY_LABEL:
        raise UserError(f"unknown study method '{label}'; choose from: {', '.join(BY_LABEL)}")
    return BY_LABEL[label]


@dataclass
class StudyRecipe:
    """Everything a study run depends on; its JSON is stored with the results and checked on resume."""

    suite: str = "micro"
    base: str = "micro"
    data_root: str | None = None
    methods: list[str] = field(default_factory=lambda: [m.label for m in CATALOGUE])
    seeds: list[int] = field(default_factory=lambda: list(range(DEFAULT_SEEDS)))
    # training budget shared by every method (None: each method's paper default)
    steps: int | None = 60
    batch_size: int | None = 32
    warmup_steps: int | None = 6
    save_every: int = 20
    lr: dict[str, float] = field(default_factory=dict)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # tuned method_args per row
    lr_source: str = ""
    # the threat model every adversarial method trains with
    train_eps: str = "4/255"
    train_pgd_steps: int = 5
    train_pgd_step_size: str = "1/255"
    # evaluation protocol
    attack: str = "apgd-ce[restarts=1;iterations=25]"
    eps: str = "4/255"
    n_adv: int | None = 250
    eval_limit: int | None = None
    wise_alpha: float = 0.5
    wise_curve: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    # geometry on the first seed of every main method: kind -> settings of its config class; each kind's
    # module in grace_bench/geometry/diagnostics/ declares its study settings (``register(..., study=...)``)
    geometry: dict[str, dict[str, Any]] = field(default_factory=lambda: _study_geometry("micro"))
    # geometry runs on the first N seeds of every main row, so its claims get a paired interval too (N >= 2)
    geometry_seeds: int = 3
    quick: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def specs(self) -> list[MethodSpec]:
        return [method_spec(label) for label in self.methods]

    def seeds_for(self, spec: MethodSpec) -> list[int]:
        return list(self.seeds) if spec.all_seeds else list(self.seeds[:1])

    def identity(self) -> dict[str, Any]:
        """The settings that change numbers (the method list and seeds may grow between runs)."""
        d = self.to_dict()
        for key in ("methods", "seeds", "data_root", "wise_curve", "geometry", "geometry_seeds"):
            d.pop(key)
        if not d["knobs"]:  # a study from before knob tuning resumes unchanged
            d.pop("knobs")
        return d


def _study_geometry(profile: str) -> dict[str, dict[str, Any]]:
    from grace_bench.geometry.registry import study_geometry

    return study_geometry(profile)


def read_study_json(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line UserError naming the file and ``fix`` when it is unreadable,
    not JSON, or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def default_tuning_file() -> Path:
    """The shipped tuning: the equal-budget one when present, else the lr-only sweep."""
    return TUNING_FILE if TUNING_FILE.is_file() else LR_ONLY_FILE


def load_tuning(path: Path | None = None) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Per row, the learning rate and the method knobs chosen on the validation split (``compare --tune`` writes
    them; an lr-only file of schema v1 has no knobs)."""
    path = path or default_tuning_file()
    if not path.is_file():
        return {}, {}
    fix = "rerun `grace-bench compare --tune`"
    data = read_study_json(path, fix)
    selected = data.get("selected", {})
    try:
        lrs = {k: float(v["lr"]) for k, v in selected.items()}
        knobs = {k: dict(v.get("method_args") or {}) for k, v in selected.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} has no valid 'selected' settings ({exc!r}); {fix}") from exc
    if "grace" in lrs and "grace-default" not in lrs and not any(knobs.values()):
        lrs["grace-default"] = lrs["grace"]  # an lr-only file tuned GRACE's lr at the spec defaults: that row
    return lrs, {k: v for k, v in knobs.items() if v}


def load_tuned_lr(path: Path | None = None) -> dict[str, float]:
    """The per-method learning rates chosen on the validation split."""
    return load_tuning(path)[0]


def _apply_suite_budget(recipe: StudyRecipe, suite: str) -> None:
    """Take the shared budget (steps, batch, warm-up, threat model) from the suite's training defaults."""
    from grace_bench.data.suites import get_suite

    defaults = get_suite(suite).training_defaults()
    if defaults is None:
        return
    for key, attr in (("max_steps", "steps"), ("batch_size", "batch_size"), ("warmup_steps", "warmup_steps")):
        if key in defaults.trainer:
            setattr(recipe, attr, defaults.trainer[key])
    for key, attr in (("eps", "train_eps"), ("pgd_steps", "train_pgd_steps"), ("pgd_step_size", "train_pgd_step_size")):
        if key in defaults.method_args:
            setattr(recipe, attr, defaults.method_args[key])


def study_recipe(suite: str = "micro", *, quick: bool = False, methods: list[str] | None = None,
                 seeds: int | None = None, steps: int | None = None, base: str | None = None,
                 data_root: str | None = None, lr_file: Path | None = None) -> StudyRecipe:
    """The default recipe of ``suite``: a suite with its own training budget (micro) gives the shared budget and
    tuned lrs; any other suite each method's paper setting, on the suite's default model and attack."""
    from grace_bench.data.suites import get_suite

    suite_spec = get_suite(suite)
    if suite_spec.training_defaults() is not None:
        recipe = StudyRecipe(suite=suite, base=suite_spec.default_checkpoint or "micro")
        _apply_suite_budget(recipe, suite)  # the budget `grace-bench finetune --suite SUITE` uses too
        tuning = lr_file or default_tuning_file()
        recipe.lr, recipe.knobs = load_tuning(tuning)
        recipe.lr_source = str(tuning.name) if recipe.lr else "method defaults"
        if quick:
            recipe.methods = list(QUICK_METHODS)
            recipe.seeds = [0]
            recipe.steps, recipe.batch_size, recipe.warmup_steps, recipe.save_every = 6, 16, 1, 3
            recipe.train_pgd_steps = 2
            recipe.train_pgd_step_size = "2/255"
            recipe.attack = "apgd-ce[restarts=1;iterations=5]"
            recipe.n_adv, recipe.eval_limit = 32, 128
            recipe.wise_curve = [0.5]
            recipe.geometry = _study_geometry("quick")
            recipe.geometry_seeds = 1
            recipe.quick = True
    else:
        recipe = StudyRecipe(suite=suite, base=base or suite_spec.default_checkpoint or "ViT-B-32:openai",
                             steps=None, batch_size=None, warmup_steps=None, save_every=500,
                             lr_source="method defaults", attack=suite_spec.attack,
                             n_adv=None, wise_curve=[0.1 * i for i in range(1, 10)],
                             geometry=_study_geometry("paper"))
    if base:
        recipe.base = base
    recipe.data_root = data_root
    if methods:
        unknown = [m for m in methods if m not in BY_LABEL]
        if unknown:
            raise UserError(f"unknown study method(s) {', '.join(unknown)}; choose from: {', '.join(BY_LABEL)}")
        needed = [ZERO_SHOT] + (["ft"] if WISE in methods else [])
        recipe.methods = [m.label for m in CATALOGUE if m.label in set(methods) | set(needed)]
    if seeds is not None:
        if seeds < 1:
            raise UserError("--seeds must be at least 1")
        recipe.seeds = list(range(seeds))
    if steps is not None:
        if steps < 1:
            raise UserError("--steps must be at least 1")
        recipe.steps = steps
    return recipe
