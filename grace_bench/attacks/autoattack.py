"""The one adapter over ``pyautoattack``: exact AutoAttack cascades with resumable progress.

Design (why not pyautoattack's own ``state_path``): pyautoattack 0.2.0 saves the robust flags after every
batch, but on restore it re-runs an interrupted attack over the *remaining* points, so batch composition
and hence results differ from an uninterrupted run; it writes the file non-atomically; and a restored run
that still has attacks to run fails (``y_adv`` is only defined when the clean pass runs).

So this module builds pyautoattack's own ``AutoAttack`` object (the sub-attacks and every default come
from it) and drives its sub-attacks itself as the steps of an ``Attack`` (``AutoAttackCascade``) run by the
one chunked loop (``loop.py``), one fixed chunk at a time (``chunks.py``): for chunk ``c`` the
clean pass, then each sub-attack on the chunk's examples still robust, with ``seed = chunk_seed(seed, c)``,
exactly as ``run_standard_evaluation`` does with ``batch_size = chunk_size`` on that chunk. Every
sub-attack reseeds torch at the start of ``perturb``, so a step's outcome depends only on its inputs and
seed. Each chunk's state (flags, next sub-attack) is replaced atomically after every step, so a
``kill -9`` loses at most one sub-attack on one chunk, and the rerun gives bit-identical flags
(tests/test_autoattack.py). On GPUs bitwise equality additionally needs deterministic kernels.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grace_bench.attacks import sanity
from grace_bench.attacks.chunks import DEFAULT_CHUNK_SIZE, DEFAULT_SEED, SEED_DERIVATION, chunk_ranges
from grace_bench.attacks.loop import Attack, run_attack
from grace_bench.attacks.progress import forwards_per_iteration, planned_iterations
from grace_bench.attacks.state import model_device, model_hash, precision_of, state_key
from grace_bench.attacks.threat import (
    AA_ATTACKS,
    AA_SETTING_KEYS,
    AttackSpec,
    check_eps_for_norm,
    format_eps,
    parse_eps,
    parse_norm,
)
from grace_bench.errors import UserError

VERSIONS = ("standard", "plus", "rand", "custom")
# Fewest classes each attack needs: DLR uses the 3rd-largest logit, targeted DLR the 4th.
MIN_CLASSES = {"apgd-ce": 2, "apgd-dlr": 3, "apgd-t": 4, "fab": 2, "fab-t": 2, "square": 2}


@dataclass
class AutoAttackResult:
    """Per-example flags (bool, CPU), the cascade ``{"clean": acc, attack: robust acc after it}``, the
    fully resolved config, timings in seconds and sanity warnings."""

    robust: torch.Tensor
    clean: torch.Tensor
    cascade: dict[str, float]
    config: dict[str, Any]
    timings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def robust_acc(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else 0.0

    @property
    def clean_acc(self) -> float:
        return float(self.clean.float().mean()) if self.clean.numel() else 0.0


def build_autoattack(
    model: nn.Module,
    *,
    num_classes: int,
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    eps: float | str,
    norm: str = "Linf",
    seed: int = DEFAULT_SEED,
    device: torch.device | str = "cpu",
):
    """Construct pyautoattack's ``AutoAttack`` and resolve the settings each sub-attack will actually use.

    Returns ``(adversary, config)``. ``config["settings"][attack]`` holds restarts, iterations, target
    classes etc. read back from pyautoattack's objects for ``version`` and then overridden by ``settings``;
    target classes are capped at ``num_classes - 1`` and attacks that need more classes are dropped
    (listed in ``config["dropped"]``).
    """
    from pyautoattack import AutoAttack, __version__

    if version not in VERSIONS:
        raise UserError(f"unknown AutoAttack version {version!r}; choose one of: {', '.join(VERSIONS)}")
    eps_f, norm = parse_eps(eps), parse_norm(norm)
    check_eps_for_norm(eps_f, norm)
    if num_classes < 2:
        raise UserError(f"AutoAttack needs at least 2 classes, the model has {num_classes}")
    if version == "custom":
        if not attacks:
            raise UserError("AutoAttack version 'custom' needs an attack list, e.g. custom:apgd-ce,apgd-t")
        unknown = [a for a in attacks if a not in AA_ATTACKS]
        if unknown:
            raise UserError(f"unknown AutoAttack attack(s) {unknown}; choose from: {', '.join(AA_ATTACKS)}")
    elif attacks:
        raise UserError(f"an explicit attack list needs version 'custom', not {version!r}")
    adversary = AutoAttack(model, attacks=list(attacks) if attacks else None, device=device, eps=eps_f, norm=norm,
                           seed=seed, version=version)
    adversary.verbose = False
    requested = list(adversary.attacks_to_run)
    resolved: dict[str, dict[str, Any]] = {}
    dropped: dict[str, str] = {}
    overrides = {k: dict(v) for k, v in (settings or {}).items()}
    for name in overrides:
        if name not in requested:
            raise UserError(f"settings given for {name!r}, which is not among the attacks {requested}")
    for name in requested:
        if num_classes < MIN_CLASSES[name]:
            dropped[name] = f"needs >= {MIN_CLASSES[name]} classes, the model has {num_classes}"
            continue
        resolved[name] = _resolve_settings(adversary, name, overrides.get(name, {}), num_classes)
    config = {
        "library": "pyautoattack",
        "library_version": __version__,
        "version": version,
        "attacks": list(resolved),
        "requested_attacks": requested,
        "dropped": dropped,
        "settings": resolved,
        "eps": eps_f,
        "eps_str": format_eps(eps_f),
        "norm": norm,
        "seed": seed,
        "num_classes": num_classes,
    }
    return adversary, config


class AutoAttackCascade(Attack):
    """pyautoattack's cascade behind the ``Attack`` interface: one step per sub-attack, each run on the chunk's
    examples still robust, seeded by the chunk seed, exactly as ``run_standard_evaluation`` does."""

    prefix = "autoattack"
    label = "AutoAttack"

    def __init__(self, adversary, config: dict[str, Any]) -> None:
        self.adversary, self.config = adversary, config
        self.steps = tuple(config["attacks"])
        self.expect_random = config["version"] == "rand"

    @classmethod
    def from_spec(cls, spec: AttackSpec, model: nn.Module, x: torch.Tensor, *, eps: float, norm: str, seed: int,
                  chunk_size: int, device: torch.device) -> AutoAttackCascade:
        """The cascade an ``--attack`` spec names, for ``model`` on the ``x`` subset."""
        return cls.build(model, x, eps=eps, norm=norm, version=spec.version or "standard",
                         attacks=spec.attacks or None, settings=spec.settings_dict() or None, seed=seed,
                         chunk_size=chunk_size, device=device)

    @classmethod
    def build(cls, model: nn.Module, x: torch.Tensor, *, eps: float | str, norm: str, version: str,
              attacks: Sequence[str] | None, settings: Mapping[str, Mapping[str, Any]] | None, seed: int,
              chunk_size: int, device: torch.device) -> AutoAttackCascade:
        with torch.no_grad():
            num_classes = int(model(x[:1].to(device)).shape[-1])
        adversary, config = build_autoattack(model, num_classes=num_classes, version=version, attacks=attacks,
                                             settings=settings, eps=eps, norm=norm, seed=seed, device=device)
        config.update(chunk_size=chunk_size, n_chunks=len(chunk_ranges(x.shape[0], chunk_size)),
                      chunk_seeds=SEED_DERIVATION, n=x.shape[0], precision=precision_of(model), device=device.type,
                      resume="per (chunk, sub-attack) state; chunk c equals pyautoattack's run_standard_evaluation "
                             "on that chunk with seed chunk_seed(seed, c)")
        return cls(adversary, config)

    def planned(self, step: str) -> int:
        return planned_iterations(step, self.config["settings"][step])

    def per_iteration(self, step: str) -> int:
        return forwards_per_iteration(step, self.config["settings"][step])

    def run_step(self, step, model, x, y, robust, seed, device) -> torch.Tensor:
        robust = robust.clone()
        idx = torch.nonzero(robust, as_tuple=False).flatten()
        if idx.numel():  # like run_standard_evaluation: under no_grad (APGD enables grad inside)
            with torch.no_grad():
                xb, yb = x[idx].clone().to(device), y[idx].clone().to(device)
                adv = _perturb(self.adversary, step, self.config["settings"][step], seed, xb, yb)
                fooled = ~yb.eq(model(adv).max(dim=1)[1]).cpu()
            robust[idx[fooled]] = False
        return robust

    def setup_warnings(self) -> list[str]:
        return sanity.emit([f"AutoAttack dropped {a}: {why}" for a, why in self.config["dropped"].items()])

    def extra_warnings(self, cascade: Mapping[str, float]) -> list[str]:
        masking = sanity.check_gradient_masking(dict(cascade))
        return sanity.emit([masking]) if masking else []


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | str,
    norm: str = "Linf",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    state_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    model_key: str | None = None,
    progress: bool = True,
    checks: bool = True,
) -> AutoAttackResult:
    """Run an AutoAttack cascade on ``model`` (images in [0,1] -> logits) over ``x``/``y``, chunk by chunk.

    Chunk ``c`` (examples ``c*chunk_size`` onwards) gets the same flags as
    ``AutoAttack(..., seed=chunk_seed(seed, c)).run_standard_evaluation(x_c, y_c, batch_size=chunk_size)``
    with the same settings. With ``state_dir`` progress is saved after every (chunk, sub-attack) step and a
    rerun resumes there with identical flags. ``model_key`` identifies the model in the state key (default:
    a hash of its state dict).
    """
    t_start = time.perf_counter()
    chunk_ranges(x.shape[0], chunk_size)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"need as many labels as images (and at least one), got {x.shape[0]} and {y.shape[0]}")
    sanity.check_pixel_range(x)
    device = torch.device(device) if device is not None else model_device(model)
    y = y.long()
    cascade = AutoAttackCascade.build(model, x, eps=eps, norm=norm, version=version, attacks=attacks,
                                      settings=settings, seed=seed, chunk_size=chunk_size, device=device)
    key = state_key(cascade.config, x, y, model_key or model_hash(model))
    run = run_attack(cascade, model, x, y, seed=seed, chunk_size=chunk_size, key=key, state_dir=state_dir,
                     device=device, progress=progress, checks=checks)
    run.timings["total_s"] = time.perf_counter() - t_start
    return AutoAttackResult(robust=run.robust, clean=run.clean, cascade=run.cascade, config=cascade.config,
                            timings=run.timings, warnings=run.warnings)


def _perturb(adversary, name: str, s: Mapping[str, Any], seed: int, x: torch.Tensor, y: torch.Tensor):
    """Call the pyautoattack sub-attack for ``name`` the way ``run_standard_evaluation`` does."""
    if name in ("apgd-ce", "apgd-dlr"):
        attack = adversary.apgd
        attack.loss = "ce" if name == "apgd-ce" else "dlr"
        attack.n_restarts, attack.eot_iter = s["restarts"], s["eot"]
        _set_apgd_iterations(attack, s["iterations"])
    elif name == "apgd-t":
        attack = adversary.apgd_targeted
        attack.n_restarts, attack.eot_iter, attack.n_target_classes = s["restarts"], s["eot"], s["targets"]
        _set_apgd_iterations(attack, s["iterations"])
    elif name in ("fab", "fab-t"):
        attack = adversary.fab
        attack.targeted = name == "fab-t"
        attack.n_restarts, attack.n_iter = s["restarts"], s["iterations"]
        attack.n_target_classes = s.get("targets", attack.n_target_classes)
    elif name == "square":
        attack = adversary.square
        attack.n_restarts, attack.n_queries = s["restarts"], s["queries"]
    else:  # pragma: no cover - build_autoattack validates names
        raise ValueError(f"unsupported attack {name}")
    attack.seed = seed
    return attack.perturb(x, y)


def _resolve_settings(adversary, name: str, override: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """The settings ``name`` runs with: pyautoattack's values for this version, then the overrides."""
    apgd, apgd_t, fab, square = adversary.apgd, adversary.apgd_targeted, adversary.fab, adversary.square
    defaults: dict[str, dict[str, Any]] = {
        "apgd-ce": {"restarts": apgd.n_restarts, "iterations": apgd.n_iter, "eot": apgd.eot_iter,
                    "rho": apgd.thr_decr, "loss": "ce"},
        "apgd-dlr": {"restarts": apgd.n_restarts, "iterations": apgd.n_iter, "eot": apgd.eot_iter,
                     "rho": apgd.thr_decr, "loss": "dlr"},
        "apgd-t": {"restarts": apgd_t.n_restarts, "iterations": apgd_t.n_iter, "eot": apgd_t.eot_iter,
                   "rho": apgd_t.thr_decr, "targets": apgd_t.n_target_classes, "loss": "dlr-targeted"},
        "fab": {"restarts": fab.n_restarts, "iterations": fab.n_iter},
        # pyautoattack always runs FAB-T with one restart.
        "fab-t": {"restarts": 1, "iterations": fab.n_iter, "targets": fab.n_target_classes},
        "square": {"restarts": square.n_restarts, "queries": square.n_queries, "p_init": square.p_init},
    }
    resolved = dict(defaults[name])
    for key, value in override.items():
        if key not in AA_SETTING_KEYS[name]:
            raise UserError(f"{name!r} has no setting {key!r}; allowed: {', '.join(AA_SETTING_KEYS[name])}")
        resolved[key] = int(value)
    if "targets" in resolved:
        if resolved["targets"] > num_classes - 1:
            resolved["targets_requested"] = resolved["targets"]
            resolved["targets"] = num_classes - 1
    return resolved


def _set_apgd_iterations(attack, n_iter: int) -> None:
    """Set APGD's iteration count together with the checkpoint schedule its constructor derives from it."""
    if attack.n_iter_orig == n_iter and attack.n_iter == n_iter:
        return
    attack.n_iter = attack.n_iter_orig = n_iter
    attack.n_iter_2 = max(int(0.22 * n_iter), 1)
    attack.n_iter_min = max(int(0.06 * n_iter), 1)
    attack.size_decr = max(int(0.03 * n_iter), 1)
