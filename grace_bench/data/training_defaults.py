"""Training defaults a suite owns: what ``grace-bench finetune --suite NAME`` uses for unset settings.

Precedence (later wins): the method's paper defaults < the suite's ``TrainingDefaults`` < ``--config FILE``
< command-line flags. A suite without training defaults (ImageNet) keeps the paper defaults. The micro
suite reads its budget and its per-method learning rates (tuned on the validation split by
``grace-bench compare --tune``) from ``grace_bench/study/micro_lr.json``, the file the study reads too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grace_bench.errors import UserError

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# the equal-budget tuning (lr and knobs) once shipped, else the first lr-only sweep
MICRO_TUNING_FILE = next((p for p in (PACKAGE_ROOT / "study" / "micro_tuning.json",
                                      PACKAGE_ROOT / "study" / "micro_lr.json") if p.is_file()),
                         PACKAGE_ROOT / "study" / "micro_lr.json")
# tuning-file "budget" key -> (where it goes, FinetuneConfig or method_args key)
_BUDGET_KEYS = {
    "steps": ("trainer", "max_steps"), "batch_size": ("trainer", "batch_size"),
    "warmup_steps": ("trainer", "warmup_steps"), "train_eps": ("method_args", "eps"),
    "train_pgd_steps": ("method_args", "pgd_steps"), "train_pgd_step_size": ("method_args", "pgd_step_size"),
}


@dataclass(frozen=True)
class TrainingDefaults:
    """A suite's fine-tuning defaults and where they come from.

    * ``trainer``: ``FinetuneConfig`` keys (``max_steps`` or ``epochs``, ``batch_size``, ``warmup_steps`` ...).
    * ``lr``: per method; the key is the method name for its default LoRA setting (GRACE: LoRA, the
      others: full fine-tuning), ``NAME-lora`` for a LoRA run of a full-fine-tuning method and
      ``NAME-full`` for a full run of a LoRA method.
    * ``method_args``: method settings, applied to every method that has them (e.g. the threat model).
    * ``knobs``: a method's own tuned settings (GRACE's λ_GV, λ_LAR, ρ; PMG-AFT's α, β ...), keyed like ``lr``.
    * ``source`` / ``lr_source``: recorded in ``config.json`` for each default taken from here.
    """

    source: str
    lr_source: str = ""
    trainer: Mapping[str, Any] = field(default_factory=dict)
    lr: Mapping[str, float] = field(default_factory=dict)
    method_args: Mapping[str, Any] = field(default_factory=dict)
    knobs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def lr_for(self, method: str, *, lora: bool, lora_by_default: bool) -> float | None:
        """The suite's learning rate for ``method`` (LoRA on or off), or None when it has none."""
        return self.lr.get(_key(method, lora=lora, lora_by_default=lora_by_default))

    def knobs_for(self, method: str, *, lora: bool, lora_by_default: bool) -> Mapping[str, Any]:
        """The suite's tuned method settings for ``method`` (LoRA on or off); empty when it has none."""
        return self.knobs.get(_key(method, lora=lora, lora_by_default=lora_by_default), {})


def _key(method: str, *, lora: bool, lora_by_default: bool) -> str:
    if lora == lora_by_default:
        return method
    return f"{method}-lora" if lora else f"{method}-full"


def display_path(path: Path) -> str:
    """``path`` relative to the checkout (``grace_bench/study/micro_lr.json``) when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(PACKAGE_ROOT.parent))
    except ValueError:
        return str(path)


def from_tuning_file(suite: str, path: Path = MICRO_TUNING_FILE) -> TrainingDefaults:
    """Training defaults from a ``compare --tune`` file: its ``budget`` and its ``selected`` learning rates and
    method settings (``method_args`` of each selected trial)."""
    shown = display_path(path)
    fix = "restore it from the repository or rerun `grace-bench compare --tune`"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"suite '{suite}' training defaults: {shown} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"suite '{suite}' training defaults: {shown} is not valid JSON ({_first_line(exc)}); "
                        f"{fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("budget", {}), dict) \
            or not isinstance(data.get("selected", {}), dict):
        raise UserError(f"suite '{suite}' training defaults: {shown} must map 'budget' and 'selected' to objects; "
                        f"{fix}")
    trainer: dict[str, Any] = {}
    method_args: dict[str, Any] = {}
    for key, value in data.get("budget", {}).items():
        if key in _BUDGET_KEYS:
            where, name = _BUDGET_KEYS[key]
            (trainer if where == "trainer" else method_args)[name] = value
    lr: dict[str, float] = {}
    knobs: dict[str, dict[str, Any]] = {}
    for label, choice in data.get("selected", {}).items():
        value = choice.get("lr") if isinstance(choice, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise UserError(f"suite '{suite}' training defaults: {shown} selected.{label}.lr must be a positive "
                            f"number, got {value!r}; {fix}")
        lr[str(label)] = float(value)
        args = choice.get("method_args", {})
        if not isinstance(args, dict):
            raise UserError(f"suite '{suite}' training defaults: {shown} selected.{label}.method_args must be an "
                            f"object, got {type(args).__name__}; {fix}")
        if args:
            knobs[str(label)] = dict(args)
    return TrainingDefaults(source=f"suite {suite} default ({shown}, study budget)",
                            lr_source=f"suite {suite} default ({shown}, tuned on val)",
                            trainer=trainer, lr=lr, method_args=method_args, knobs=knobs)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
