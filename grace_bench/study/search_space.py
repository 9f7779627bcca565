"""What ``grace-bench compare --tune`` may change per method, over which range, and why.

Every tuned row gets the same number of trials (``TRIALS``): the budget is equal, whatever the number of
knobs. Trials are a seeded Latin-hypercube random search: for each knob the ``n`` trials fall in ``n``
equal strata of its range (log-scaled where marked), in an order drawn from ``random.Random`` seeded by
the search seed and the row's label, so the same seed gives the same trials in the same order on any
machine. A lr-only row thus gets ``n`` evenly spread learning rates; a row with more knobs shares the same
``n`` trials among them. Values are rounded to two significant digits.

Knobs of a method are looked up by its trainer method name in ``KNOBS``; a method without an entry tunes the
learning rate only. Adding a knob is one line there. A row that pins a knob in its ``method_args`` (e.g.
``grace-default``) does not tune it. The threat model of adversarial training (ε, PGD steps) is fixed by the
protocol for every method and is never a knob.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

TRIALS = 8
SEARCH_SEED = 0

_SWEEP = "the lr-only sweep of grace_bench/study/micro_lr.json"


@dataclass(frozen=True)
class Knob:
    """One tuned setting: ``name`` is ``lr`` or a method argument; a range (``low``..``high``, ``log``) or
    ``choices``; ``why`` says why this range."""

    name: str
    why: str
    low: float | None = None
    high: float | None = None
    log: bool = True
    choices: tuple[Any, ...] = ()

    def value_at(self, u: float) -> Any:
        """The value at quantile ``u`` in [0, 1) of the range (or the choice that stratum falls in)."""
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        assert self.low is not None and self.high is not None
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        return float(f"{value:.2g}")

    def to_dict(self) -> dict[str, Any]:
        if self.choices:
            return {"name": self.name, "choices": list(self.choices), "why": self.why}
        return {"name": self.name, "low": self.low, "high": self.high, "log": self.log, "why": self.why}


LR_FULL = Knob("lr", f"full fine-tuning: every method's best lr of {_SWEEP} lay in 1e-3..3e-3, every lr below 1e-4 "
               "was far worse and 1e-2 began to diverge", 1e-4, 1e-2)
LR_LORA = Knob("lr", f"LoRA trains few parameters and takes larger steps: the LoRA rows' best of {_SWEEP} lay in "
               "3e-4..1e-2, and 3e-2 collapsed to chance", 3e-4, 2e-2)

# Method knobs by trainer method name (the learning rate is added to every row). One line adds a knob.
KNOBS: dict[str, tuple[Knob, ...]] = {
    "grace": (
        Knob("lambda_gv", "the paper states no λ_GV; our ablation found GV at the default 1 cost 17 points of "
             "robust accuracy, so the range runs from negligible (1e-3) to that default", 1e-3, 1.0),
        Knob("lambda_lar", "the paper states no λ_LAR; a factor 4 either side of the default 1", 0.25, 4.0),
        Knob("awp_rho", "AWP's γ: 5e-3 (our default, as AWP) sits in the middle of 1e-3..2.5e-2, the range the AWP "
             "paper explores", 1e-3, 2.5e-2),
    ),
    "pmg-aft": (
        Knob("alpha", "PMG-AFT's code uses unit weights; a factor 5 either side", 0.2, 5.0),
        Knob("beta", "PMG-AFT's code uses unit weights; a factor 5 either side", 0.2, 5.0),
    ),
    "flyp": (
        Knob("label_mask", "FLYP treats same-class pairs as negatives; masking them is the one variant the module "
             "offers", choices=(False, True)),
    ),
    "tga-zsr": (
        Knob("alpha", "TGA-ZSR's code weighs the adversarial attention term by 0.08; a factor 5 either side, like "
             "the other methods' loss weights", 0.016, 0.4),
        Knob("beta", "TGA-ZSR's code weighs the clean attention term by 0.05; a factor 5 either side", 0.01, 0.25),
    ),
    "agft": (
        Knob("agft_kappa", "AGFT's teacher temperature ratio: 0.4 in its README, 1 in its main.py; 0.1..1 spans both "
             "and softer teachers", 0.1, 1.0),
    ),
    "laat": (
        Knob("beta", "LAAT's code weighs its clean/adv cosine term by 1 (TRADES-cos); a factor 5 either side, like "
             "the other methods' loss weights", 0.2, 5.0),
    ),
    # FT: lr only (no knob of its own); TeCoA, FARE: lr only, their threat model is the protocol's; Sim-CLIP,
    # AdvCLIP-LoRA: lr only, their losses have no weight to tune (ε and the ascent steps are the threat model).
}


def uses_lora(method: str, lora_rank: int | None) -> bool:
    """0 is full fine-tuning; None is the method's default (its ``trainer_defaults`` lora_rank; GRACE: 64)."""
    if lora_rank is not None:
        return lora_rank > 0
    from grace_bench.finetune.config import FALLBACK
    from grace_bench.finetune.methods import get_method

    default = get_method(method).trainer_defaults.get("lora_rank")
    return int(FALLBACK["lora_rank"] if default is None else default.value) > 0


def space_for(method: str, lora_rank: int | None, pinned: dict[str, Any] | None = None) -> tuple[Knob, ...]:
    """The knobs one row tunes: its lr range plus its method's knobs, minus those the row pins."""
    pinned = pinned or {}
    lr = LR_LORA if uses_lora(method, lora_rank) else LR_FULL
    return (lr, *(k for k in KNOBS.get(method, ()) if k.name not in pinned))


def trial_points(space: tuple[Knob, ...], n: int = TRIALS, *, seed: int = SEARCH_SEED, key: str = "") -> list[dict]:
    """``n`` settings of ``space`` (Latin hypercube, seeded by ``seed`` and ``key``), in trial order."""
    if n < 1:
        raise ValueError("a search needs at least one trial")
    rng = random.Random(f"grace-bench tune {seed} {key}")  # str seeds hash with SHA-512: stable everywhere
    columns = []
    for knob in space:
        strata = list(range(n))
        rng.shuffle(strata)
        columns.append([knob.value_at((s + rng.random()) / n) for s in strata])
    return [{knob.name: col[i] for knob, col in zip(space, columns)} for i in range(n)]


def best_trial(trials: list[dict[str, Any]], criterion: str) -> dict[str, Any]:
    """The trial with the highest ``criterion``; ties go to the smaller lr, then to the earlier trial."""
    if not trials:
        raise ValueError("no trials to choose from")
    return max(trials, key=lambda t: (t[criterion], -t["lr"], -t["index"]))
