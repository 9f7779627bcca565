"""``evaluate_adversarial``: the one entry point the eval harness calls for the adversarial axis.

It loads the attacked subset, looks the spec's kind up in ``threat.ATTACKS`` (PGD, the AutoAttack cascade),
and runs that ``Attack`` in the one chunked, resumable loop (``loop.run_attack``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from grace_bench.attacks import sanity
from grace_bench.attacks.chunks import DEFAULT_CHUNK_SIZE, DEFAULT_SEED, chunk_ranges, clear_state
from grace_bench.attacks.loop import run_attack
from grace_bench.attacks.naming import describe_attack
from grace_bench.attacks.state import model_device, model_hash, state_key
from grace_bench.attacks.threat import (
    ATTACKS,
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
    rank: int = 0,
    world: int = 1,
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

    Under torchrun every rank calls this with the same arguments and its ``rank`` of ``world`` (default
    process group initialised): the chunks are dealt across ranks and every rank returns the same gathered
    flags (``timings`` names the chunks each rank ran); only rank 0 runs the model checks.
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
        device = model_device(classifier)
        attack_obj = ATTACKS.get(spec.kind).from_spec(spec, classifier, x, eps=eps_value, norm=norm, seed=seed,
                                                      chunk_size=chunk_size, device=device)
        key = state_key(attack_obj.config, x, y, model_hash(classifier))
        run = run_attack(attack_obj, classifier, x, y, seed=seed, chunk_size=chunk_size, key=key,
                         state_dir=state_dir, device=device, progress=progress, rank=rank, world=world)
    out = {"robust": run.robust, "clean": run.clean, "cascade": run.cascade, "config": attack_obj.config,
           "timings": run.timings, "warnings": run.warnings}
    out["timings"].update(load_s=load_s, total_s=time.perf_counter() - t_start)
    robust, clean = out["robust"], out["clean"]
    return {
        "attack": spec.name,
        "attack_label": describe_attack({"attack": spec.name, "config": out["config"]}),
        "eps": format_eps(eps_value),
        "eps_value": eps_value,
        "norm": norm,
        "n": len(chosen),
        "clean_acc": int(clean.sum()) / len(chosen),  # exact fractions, equal to the cascade's
        "robust_acc": int(robust.sum()) / len(chosen),
        "cascade": out["cascade"],
        "config": out["config"],
        "timings": out["timings"],
        "warnings": out["warnings"],
        "robust_flags": robust.tolist(),
        "clean_flags": clean.tolist(),
        "indices": chosen,
    }


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
    """The examples at ``indices``, in order (in-memory tensors are sliced; other datasets use workers)."""
    from tqdm.auto import tqdm

    from grace_bench.eval.batching import iter_batches

    batches = iter_batches(dataset, indices, batch_size, num_workers=num_workers)
    xs, ys = [], []
    for xb, yb in tqdm(batches, total=-(-len(indices) // batch_size), desc="load adversarial subset", unit="batch",
                       disable=not progress, leave=False):
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
