"""``evaluate_adversarial``: the one entry point the eval harness calls for the adversarial axis."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from grace_bench.attacks import sanity
from grace_bench.attacks.autoattack import (
    DEFAULT_SEED,
    load_state,
    model_device,
    model_hash,
    pack_flags,
    precision_of,
    run_autoattack,
    save_state,
    state_key,
    unpack_flags,
)
from grace_bench.attacks.chunks import DEFAULT_CHUNK_SIZE, SEED_DERIVATION, chunk_ranges, chunk_seed, clear_state
from grace_bench.attacks.naming import describe_attack
from grace_bench.attacks.pgd import pgd_attack
from grace_bench.attacks.progress import AttackProgress
from grace_bench.attacks.threat import (
    PGD_STEP_SIZE,
    PGD_STEPS,
    AttackSpec,
    check_eps_for_norm,
    format_eps,
    parse_attack_spec,
    parse_eps,
    parse_norm,
)
from grace_bench.errors import UserError

PGD_STATE_SCHEMA = "grace-bench/pgd-chunk-state/v1"
__all__ = ["PGD_STEPS", "PGD_STEP_SIZE", "clear_state", "evaluate_adversarial"]


def evaluate_adversarial(
    classifier: nn.Module,
    dataset: Dataset,
    *,
    attack: str | AttackSpec,
    eps: float | str,
    norm: str = "Linf",
    n: int | None = None,
    batch_size: int = 250,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    state_dir: str | Path,
    seed: int = DEFAULT_SEED,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Attack the first ``n`` examples of ``dataset`` (or ``indices``, truncated to ``n``) and return a JSON-ready dict.

    ``attack`` is an ``--attack`` spec (``pgd``, ``apgd-ce``, ``aa-standard``, ``aa-plus``, ``aa-rand`` or
    ``custom:<list>``). PGD runs ``PGD_STEPS`` steps of ``PGD_STEP_SIZE`` with a seeded random start. The
    examples are attacked in fixed chunks of ``chunk_size`` (part of the protocol, recorded in ``config``),
    chunk ``c`` seeded by ``chunk_seed(seed, c)``; ``batch_size`` only batches the loading. The classifier
    is evaluated in eval mode with frozen parameters (both restored afterwards). Progress goes to
    ``state_dir`` after every (chunk, sub-attack) step, so a killed run resumes with identical flags; call
    ``clear_state(state_dir)`` once the result is stored. The dict holds ``attack`` (the canonical name),
    ``attack_label`` (e.g. ``APGD-CE 1×100``), ``eps`` (fraction string), ``eps_value``, ``norm``, ``n``,
    ``clean_acc``, ``robust_acc``, ``cascade``, ``config``, ``timings``, ``warnings``, ``robust_flags``,
    ``clean_flags`` and ``indices``.
    """
    spec = attack if isinstance(attack, AttackSpec) else parse_attack_spec(attack)
    if spec.kind == "none":
        raise UserError("attack 'none' runs no adversarial evaluation; choose pgd, apgd-ce, aa-standard or custom:...")
    eps_value, norm = parse_eps(eps), parse_norm(norm)
    check_eps_for_norm(eps_value, norm)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    chunk_ranges(1, chunk_size)  # validates chunk_size before any work
    t_start = time.perf_counter()
    chosen = _select_indices(len(dataset), n, indices)
    x, y = _load_examples(dataset, chosen, batch_size, num_workers, progress)
    sanity.check_pixel_range(x)
    load_s = time.perf_counter() - t_start
    state_dir = Path(state_dir)
    with _attack_mode(classifier):
        if spec.kind == "pgd":
            out = _run_pgd(classifier, x, y, spec, eps_value, norm, seed, chunk_size, state_dir, progress)
        else:
            result = run_autoattack(classifier, x, y, eps=eps_value, norm=norm, version=spec.version,
                                    attacks=spec.attacks or None, settings=spec.settings_dict() or None, seed=seed,
                                    chunk_size=chunk_size, state_dir=state_dir, progress=progress)
            out = {"robust": result.robust, "clean": result.clean, "cascade": result.cascade,
                   "config": result.config, "timings": result.timings, "warnings": result.warnings}
    out["timings"].update(load_s=load_s, total_s=time.perf_counter() - t_start)
    robust, clean = out["robust"], out["clean"]
    return {
        "attack": spec.name,
        "attack_label": describe_attack({"attack": spec.name, "config": out["config"]}),
        "eps": format_eps(eps_value),
        "eps_value": eps_value,
        "norm": norm,
        "n": len(chosen),
        "clean_acc": float(clean.float().mean()),
        "robust_acc": float(robust.float().mean()),
        "cascade": out["cascade"],
        "config": out["config"],
        "timings": out["timings"],
        "warnings": out["warnings"],
        "robust_flags": robust.tolist(),
        "clean_flags": clean.tolist(),
        "indices": chosen,
    }


def _run_pgd(classifier, x, y, spec, eps, norm, seed, chunk_size, state_dir, progress) -> dict[str, Any]:
    """PGD over fixed chunks; chunk ``c``'s random start uses a generator seeded by ``chunk_seed(seed, c)``."""
    settings = spec.settings_dict().get("pgd", {})
    steps = int(settings.get("steps", PGD_STEPS))
    step_size = format_eps(settings.get("step", PGD_STEP_SIZE))
    device = model_device(classifier)
    ranges = chunk_ranges(x.shape[0], chunk_size)
    config = {"attack": "pgd", "eps": eps, "eps_str": format_eps(eps), "norm": norm, "steps": steps,
              "step_size": step_size, "step_size_value": parse_eps(step_size), "random_start": True, "restarts": 1,
              "loss": "ce", "seed": seed, "seed_derivation": SEED_DERIVATION, "chunk_size": chunk_size,
              "n_chunks": len(ranges), "n": x.shape[0], "precision": precision_of(classifier),
              "device": device.type}
    key = state_key(config, x, y, model_hash(classifier))
    path = state_dir / f"pgd-{key[:16]}.json"
    state = load_state(path, key, schema=PGD_STATE_SCHEMA)
    resumed_from = None if state is None else {"chunk": state["next_chunk"]}
    if state is None:
        state = {"schema": PGD_STATE_SCHEMA, "key": key, "next_chunk": 0, "clean": "", "robust": "",
                 "attack_s": 0.0, "clean_s": 0.0}
    t0 = time.perf_counter()
    messages = sanity.model_checks(classifier, x[:chunk_size].to(device), y[:chunk_size].to(device))
    checks_s = time.perf_counter() - t0
    bar = AttackProgress(len(ranges) * steps, desc="PGD", enabled=progress)
    bar.skip(state["next_chunk"] * steps)
    steps_run = 0
    for c, (start, stop) in enumerate(ranges):
        if c < state["next_chunk"]:
            continue
        xb, yb = x[start:stop].to(device), y[start:stop].to(device)
        t_clean = time.perf_counter()
        with torch.no_grad():
            clean = classifier(xb).argmax(dim=1).eq(yb)
        t_attack = time.perf_counter()
        bar.note(chunk=f"{c + 1}/{len(ranges)}")
        generator = torch.Generator(device=device).manual_seed(chunk_seed(seed, c))
        with bar.step(classifier, steps, 1):
            x_adv = pgd_attack(classifier, xb, yb, eps=eps, norm=norm, steps=steps, step_size=step_size,
                               random_start=True, loss="ce", generator=generator)
            with torch.no_grad():
                robust = clean & classifier(x_adv).argmax(dim=1).eq(yb)
            robust, clean = robust.cpu(), clean.cpu()  # syncs once per chunk
        steps_run += 1
        state["clean_s"] += t_attack - t_clean
        state["attack_s"] += time.perf_counter() - t_attack
        state["clean"] += pack_flags(clean)
        state["robust"] += pack_flags(robust)
        state["next_chunk"] = c + 1
        save_state(path, state)
    bar.close()
    clean, robust = unpack_flags(state["clean"]), unpack_flags(state["robust"])
    sanity.check_invariants(robust, clean, eps)
    attack_s = state["attack_s"]
    timings = {"clean_s": state["clean_s"], "checks_s": checks_s, "attack_s": attack_s,
               "image_steps_per_s": x.shape[0] * steps / attack_s if attack_s > 0 else None,
               "resumed_from": resumed_from, "steps_run": steps_run}
    cascade = {"clean": float(clean.float().mean()), "pgd": float(robust.float().mean())}
    return {"robust": robust, "clean": clean, "cascade": cascade, "config": config, "timings": timings,
            "warnings": messages}


def _select_indices(size: int, n: int | None, indices: Sequence[int] | None) -> list[int]:
    if indices is not None:
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < size]
        if bad:
            raise UserError(f"adversarial indices {bad[:5]} are outside the dataset (size {size}); fix the id list")
        if len(set(chosen)) != len(chosen):
            raise UserError("adversarial indices contain duplicates; give each example once")
    else:
        chosen = list(range(size))
    if n is not None:
        if n < 1:
            raise UserError(f"--n-adv must be >= 1, got {n}")
        if n > len(chosen):
            raise UserError(f"--n-adv {n} exceeds the {len(chosen)} available examples; use --n-adv {len(chosen)}")
        chosen = chosen[:n]
    if not chosen:
        raise UserError("no examples to attack: the dataset is empty")
    return chosen


def _load_examples(dataset, indices, batch_size, num_workers, progress) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm.auto import tqdm

    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    xs, ys = [], []
    for xb, yb in tqdm(loader, desc="load adversarial subset", unit="batch", disable=not progress, leave=False):
        xs.append(xb.float())
        ys.append(torch.as_tensor(yb).long())
    return torch.cat(xs), torch.cat(ys)


@contextmanager
def _attack_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; the previous modes and flags are restored."""
    modes = [(m, m.training) for m in module.modules()]
    grads = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)
