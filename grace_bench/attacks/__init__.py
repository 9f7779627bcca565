"""Adversarial attacks in [0, 1] pixel space: PGD, the AutoAttack adapter, sanity checks and evaluation."""

from grace_bench.attacks.autoattack import AutoAttackResult, build_autoattack, run_autoattack
from grace_bench.attacks.evaluate import evaluate_adversarial
from grace_bench.attacks.pgd import margin_loss, pgd_attack
from grace_bench.attacks.threat import AttackSpec, format_eps, parse_attack_spec, parse_eps, parse_norm

__all__ = [
    "AttackSpec",
    "AutoAttackResult",
    "build_autoattack",
    "evaluate_adversarial",
    "format_eps",
    "margin_loss",
    "parse_attack_spec",
    "parse_eps",
    "parse_norm",
    "pgd_attack",
    "run_autoattack",
]
