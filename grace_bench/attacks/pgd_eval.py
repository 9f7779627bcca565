"""PGD as an evaluation ``Attack``: one step per chunk, a seeded random start, the whole chunk attacked."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from grace_bench.attacks.chunks import SEED_DERIVATION, chunk_ranges
from grace_bench.attacks.loop import Attack
from grace_bench.attacks.pgd import pgd_attack
from grace_bench.attacks.state import precision_of
from grace_bench.attacks.threat import PGD_STEP_SIZE, PGD_STEPS, AttackSpec, format_eps, parse_eps


class PGDAttack(Attack):
    """``steps`` steps of ``step_size`` from a uniform random start seeded by the chunk seed, cross-entropy loss.

    Every example of the chunk is attacked (the random start of an example depends on its place in the
    chunk), and an example counts as robust when it is classified correctly both clean and after the attack.
    """

    prefix = "pgd"
    label = "PGD"
    steps = ("pgd",)

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @classmethod
    def from_spec(cls, spec: AttackSpec, model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, seed: int,
                  chunk_size: int, device: torch.device) -> PGDAttack:
        settings = spec.settings_dict().get("pgd", {})
        step_size = format_eps(settings.get("step", PGD_STEP_SIZE))
        return cls({"attack": "pgd", "eps": eps, "eps_str": format_eps(eps), "norm": norm,
                    "steps": int(settings.get("steps", PGD_STEPS)), "step_size": step_size,
                    "step_size_value": parse_eps(step_size), "random_start": True, "restarts": 1, "loss": "ce",
                    "seed": seed, "seed_derivation": SEED_DERIVATION, "chunk_size": chunk_size,
                    "n_chunks": len(chunk_ranges(x.shape[0], chunk_size)), "n": x.shape[0],
                    "precision": precision_of(model), "device": device.type})

    def planned(self, step: str) -> int:
        return self.config["steps"]

    def run_step(self, step, model, x, y, robust, seed, device) -> torch.Tensor:
        c = self.config
        xb, yb = x.to(device), y.to(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        x_adv = pgd_attack(model, xb, yb, eps=c["eps"], norm=c["norm"], steps=c["steps"], step_size=c["step_size"],
                           random_start=True, loss="ce", generator=generator)
        with torch.no_grad():
            correct = model(x_adv).argmax(dim=1).eq(yb)
        return robust & correct.cpu()  # syncs once per chunk
