"""Adversarial attacks in [0, 1] pixel space: PGD, the AutoAttack adapter, sanity checks and evaluation.

Names are imported lazily, so tables and figures that only need ``naming`` or ``threat`` do not load torch.
"""

from __future__ import annotations

from grace_bench.utils.lazy import lazy_getattr

_EXPORTS = {
    "Attack": "loop",
    "run_attack": "loop",
    "PGDAttack": "pgd_eval",
    "AutoAttackCascade": "autoattack",
    "ATTACKS": "threat",
    "AutoAttackResult": "autoattack",
    "build_autoattack": "autoattack",
    "run_autoattack": "autoattack",
    "DEFAULT_CHUNK_SIZE": "chunks",
    "chunk_seed": "chunks",
    "clear_state": "chunks",
    "evaluate_adversarial": "evaluate",
    "describe_attack": "naming",
    "robust_title": "naming",
    "margin_loss": "pgd",
    "pgd_attack": "pgd",
    "AttackSpec": "threat",
    "canonical_attack": "threat",
    "format_eps": "threat",
    "parse_attack_spec": "threat",
    "parse_eps": "threat",
    "parse_fraction": "threat",
    "describe_eps": "threat",
    "parse_norm": "threat",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr("grace_bench.attacks", _EXPORTS)
