"""The one adapter over ``pyautoattack``: exact AutoAttack cascades with resumable progress.

Design (why not pyautoattack's own ``state_path``): pyautoattack 0.2.0 saves the robust flags after every
batch, but on restore it re-runs an interrupted attack over the *remaining* points, so batch composition
and hence results differ from an uninterrupted run; it writes the file non-atomically; and a restored run
that still has attacks to run fails (``y_adv`` is only defined when the clean pass runs).

So this module builds pyautoattack's own ``AutoAttack`` object (the sub-attacks and every default come
from it) and drives its sub-attacks itself, one fixed chunk at a time (``chunks.py``): for chunk ``c`` the
clean pass, then each sub-attack on the chunk's examples still robust, with ``seed = chunk_seed(seed, c)``,
exactly as ``run_standard_evaluation`` does with ``batch_size = chunk_size`` on that chunk. Every
sub-attack reseeds torch at the start of ``perturb``, so a step's outcome depends only on its inputs and
seed. Each chunk's state (flags, next sub-attack) is replaced atomically after every step, so a
``kill -9`` loses at most one sub-attack on one chunk, and the rerun gives bit-identical flags
(tests/test_autoattack.py). On GPUs bitwise equality additionally needs deterministic kernels.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grace_bench.attacks import sanity
from grace_bench.attacks.chunks import DEFAULT_CHUNK_SIZE, SEED_DERIVATION, chunk_ranges, chunk_seed
from grace_bench.attacks.progress import AttackProgress, forwards_per_iteration, planned_iterations
from grace_bench.attacks.threat import (
    AA_ATTACKS,
    AA_SETTING_KEYS,
    check_eps_for_norm,
    format_eps,
    parse_eps,
    parse_norm,
)
from grace_bench.errors import UserError
from grace_bench.utils.atomic import atomic_write_json

DEFAULT_SEED = 0
STATE_SCHEMA = "grace-bench/autoattack-chunk-state/v1"
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
    ranges = chunk_ranges(x.shape[0], chunk_size)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"need as many labels as images (and at least one), got {x.shape[0]} and {y.shape[0]}")
    sanity.check_pixel_range(x)
    device = torch.device(device) if device is not None else model_device(model)
    y = y.long()
    n = x.shape[0]
    with torch.no_grad():
        num_classes = int(model(x[:1].to(device)).shape[-1])
    adversary, config = build_autoattack(model, num_classes=num_classes, version=version, attacks=attacks,
                                         settings=settings, eps=eps, norm=norm, seed=seed, device=device)
    config.update(chunk_size=chunk_size, n_chunks=len(ranges), chunk_seeds=SEED_DERIVATION, n=n,
                  precision=precision_of(model), device=device.type,
                  resume="per (chunk, sub-attack) state; chunk c equals pyautoattack's run_standard_evaluation "
                         "on that chunk with seed chunk_seed(seed, c)")
    key = state_key(config, x, y, model_key or model_hash(model))
    folder = Path(state_dir) / f"autoattack-{key[:16]}" if state_dir is not None else None

    messages: list[str] = []
    if config["dropped"]:
        messages += sanity.emit([f"AutoAttack dropped {a}: {why}" for a, why in config["dropped"].items()])
    names = config["attacks"]
    plan = {a: planned_iterations(a, config["settings"][a]) for a in names}
    bar = AttackProgress(len(ranges) * sum(plan.values()), desc="AutoAttack", enabled=progress)
    clean = torch.zeros(n, dtype=torch.bool)
    robust = torch.zeros(n, dtype=torch.bool)
    counts = {a: 0 for a in names}
    seconds: dict[str, float] = {"clean": 0.0, **{a: 0.0 for a in names}}
    loaded, first_todo, steps_run = False, None, 0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        checks_s = 0.0
        if checks:
            t0 = time.perf_counter()
            messages += sanity.model_checks(model, x[:chunk_size].to(device), y[:chunk_size].to(device),
                                            expect_random=version == "rand")
            checks_s = time.perf_counter() - t0
        for c, (start, stop) in enumerate(ranges):
            path = folder / f"chunk-{c:05d}.json" if folder is not None else None
            state = load_state(path, key)
            loaded = loaded or state is not None
            if first_todo is None and (state is None or state["next_attack"] < len(names)):
                first_todo = {"chunk": c, "attack_index": 0 if state is None else state["next_attack"]}
            if state is None:
                state = {"schema": STATE_SCHEMA, "key": key, "chunk": c, "start": start, "stop": stop,
                         "seed": chunk_seed(seed, c), "clean": None, "robust": None, "next_attack": 0,
                         "counts": {}, "seconds": {}}
            steps_run += _run_chunk(adversary, names, config["settings"], model, x[start:stop], y[start:stop],
                                    state, path, device, bar, plan, f"{c + 1}/{len(ranges)}")
            clean[start:stop] = unpack_flags(state["clean"])
            robust[start:stop] = unpack_flags(state["robust"])
            for a in names:
                counts[a] += state["counts"][a]
            for k, v in state["seconds"].items():
                seconds[k] = seconds.get(k, 0.0) + v
    bar.close()

    cascade = {"clean": float(clean.float().mean()), **{a: counts[a] / n for a in names}}
    masking = sanity.check_gradient_masking(cascade)
    if masking:
        messages += sanity.emit([masking])
    sanity.check_invariants(robust, clean, config["eps"])
    timings = {
        "total_s": time.perf_counter() - t_start,
        "clean_s": seconds["clean"],
        "checks_s": checks_s,
        "attacks_s": {a: seconds[a] for a in names},
        # where this call picked up saved work: the first step it had to run (None: nothing was saved)
        "resumed_from": (first_todo or {"chunk": len(ranges), "attack_index": 0}) if loaded else None,
        "steps_run": steps_run,
    }
    return AutoAttackResult(robust=robust, clean=clean, cascade=cascade, config=config, timings=timings,
                            warnings=messages)


def _run_chunk(adversary, names, settings, model, x, y, state, path, device, bar, plan, label) -> int:
    """The clean pass and the remaining cascade steps of one chunk, saving after each; returns steps run."""
    if state["clean"] is None:
        t0 = time.perf_counter()
        with torch.no_grad():
            flags = y.to(device).eq(model(x.clone().to(device)).max(dim=1)[1]).cpu()
        state.update(clean=pack_flags(flags), robust=pack_flags(flags))
        state["seconds"]["clean"] = time.perf_counter() - t0
        save_state(path, state)
    robust = unpack_flags(state["robust"])
    for name in names[: state["next_attack"]]:
        bar.skip(plan[name])
    steps = 0
    for index in range(state["next_attack"], len(names)):
        name = names[index]
        t0 = time.perf_counter()
        idx = torch.nonzero(robust, as_tuple=False).flatten()
        bar.note(chunk=label, attack=name, robust=f"{int(robust.sum())}/{robust.numel()}")
        with bar.step(model, plan[name], forwards_per_iteration(name, settings[name])), torch.no_grad():
            if idx.numel():  # like run_standard_evaluation: under no_grad (APGD enables grad inside)
                xb, yb = x[idx].clone().to(device), y[idx].clone().to(device)
                adv = _perturb(adversary, name, settings[name], state["seed"], xb, yb)
                fooled = ~yb.eq(model(adv).max(dim=1)[1]).cpu()
                robust[idx[fooled]] = False
        steps += 1
        state["robust"] = pack_flags(robust)
        state["counts"][name] = int(robust.sum())
        state["seconds"][name] = time.perf_counter() - t0
        state["next_attack"] = index + 1
        save_state(path, state)
    return steps


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


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def precision_of(model: nn.Module) -> str:
    """``"fp32"`` when every floating-point parameter is float32, else the dtypes found."""
    dtypes = {str(p.dtype).replace("torch.", "") for p in model.parameters() if p.is_floating_point()}
    return "fp32" if dtypes <= {"float32"} else ",".join(sorted(dtypes))


def model_hash(model: nn.Module) -> str:
    """sha256 of the model's state dict (weights, head and class subset)."""
    from grace_bench.models.clip_model import state_dict_fingerprint

    return state_dict_fingerprint(model.state_dict())


def state_key(config: Mapping[str, Any], x: torch.Tensor, y: torch.Tensor, model_key: str) -> str:
    """sha256 over the resolved config, the model key and the exact input bytes: a state is reused only
    for the same attack on the same model and data."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    h.update(model_key.encode())
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def load_state(path: Path | None, key: str, schema: str = STATE_SCHEMA) -> dict | None:
    """The saved state at ``path`` if it exists and matches ``schema`` and ``key``, else ``None``."""
    if path is None or not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: start again (our writes are atomic, so this is not one of ours)
    if state.get("schema") != schema or state.get("key") != key:
        return None
    return state


def save_state(path: Path | None, state: dict) -> None:
    """Replace ``path`` atomically with ``state`` (no-op without a path)."""
    if path is not None:
        atomic_write_json(path, state)


def pack_flags(flags: torch.Tensor) -> str:
    """Bool flags as a compact ``"0101..."`` string."""
    return "".join("1" if f else "0" for f in flags.tolist())


def unpack_flags(text: str) -> torch.Tensor:
    """Inverse of ``pack_flags``."""
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)
