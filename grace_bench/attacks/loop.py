"""The ``Attack`` interface and the one resumable, chunked loop every attack runs in.

An ``Attack`` is a fixed list of ``steps`` (PGD: one; an AutoAttack cascade: its sub-attacks). ``run_step``
attacks one chunk with one step and returns the chunk's new robust flags. The loop (``run_chunks``) owns
everything else: for each chunk index it is given, the clean pass, then every step not yet done, saving the
chunk's state atomically after each, so a killed run resumes at the first unfinished (chunk, step) with
identical flags; the progress bar; and ``gather`` puts the per-chunk flags back in subset order. Under
torchrun ``run_attack`` deals the chunks across ranks (``sharding.deal_chunks``), each rank runs its own
chunks and the ranks exchange the finished chunk states, so the flags do not depend on the world size.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grace_bench.attacks import sanity
from grace_bench.attacks.chunks import chunk_ranges, chunk_seed
from grace_bench.attacks.progress import AttackProgress
from grace_bench.attacks.sharding import all_gather_json, deal_chunks
from grace_bench.attacks.state import load_state, pack_flags, save_state, unpack_flags

CHUNK_STATE_SCHEMA = "grace-bench/attack-chunk-state/v2"


class Attack(ABC):
    """One attack configuration, run chunk by chunk by ``run_chunks``.

    ``prefix`` names its state folder (``<prefix>-<key>``, see ``chunks.STATE_PREFIXES``), ``label`` its
    progress bar, ``config`` the resolved settings (recorded and hashed into the state key) and ``steps`` the
    names of the steps run on every chunk, in order.
    """

    prefix: str
    label: str
    config: dict[str, Any]
    steps: tuple[str, ...]
    expect_random: bool = False  # randomised defences: skip the determinism check

    @abstractmethod
    def run_step(self, step: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor,
                 seed: int, device: torch.device) -> torch.Tensor:
        """Attack one chunk (``x``, ``y`` on the CPU) with ``step``; return its new robust flags (bool, CPU).

        ``robust`` are the chunk's flags so far; an example not robust before stays not robust.
        """

    def planned(self, step: str) -> int:
        """Progress units (iterations) ``step`` takes on one chunk at most."""
        return 1

    def per_iteration(self, step: str) -> int:
        """Roughly how many forward calls one iteration of ``step`` makes."""
        return 1

    def setup_warnings(self) -> list[str]:
        """Warnings known before any chunk runs (e.g. a sub-attack dropped for too few classes)."""
        return []

    def extra_warnings(self, cascade: Mapping[str, float]) -> list[str]:
        """Warnings read off the finished cascade (e.g. gradient masking)."""
        return []


@dataclass
class AttackRun:
    """Gathered flags (bool, CPU, subset order), the cascade, timings and warnings of one attack."""

    robust: torch.Tensor
    clean: torch.Tensor
    cascade: dict[str, float]
    timings: dict[str, Any]
    warnings: list[str]


def run_attack(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int, chunk_size: int,
               key: str, state_dir: str | Path | None, device: torch.device, progress: bool = True,
               checks: bool = True, rank: int = 0, world: int = 1) -> AttackRun:
    """Run ``attack`` on every chunk of ``x``/``y`` and gather the result.

    Under torchrun (``world`` > 1, the default process group initialised) every rank calls this with the
    whole subset: it runs the chunks ``deal_chunks`` gives it, each with its own resume state, then the
    ranks exchange their finished chunk states and every rank gathers the same flags in subset order. The
    model checks run on rank 0 only, so rank 0's warnings are the complete list.
    """
    ranges = chunk_ranges(x.shape[0], chunk_size)
    mine = deal_chunks(len(ranges), rank, world)
    messages = attack.setup_warnings()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # pyautoattack reseeds the global generator
        checks_s = 0.0
        if checks and rank == 0:
            t0 = time.perf_counter()
            messages += sanity.model_checks(model, x[:chunk_size].to(device), y[:chunk_size].to(device),
                                            expect_random=attack.expect_random)
            checks_s = time.perf_counter() - t0
        folder = Path(state_dir) / f"{attack.prefix}-{key[:16]}" if state_dir is not None else None
        states, info = run_chunks(attack, model, x, y, mine, seed=seed, chunk_size=chunk_size,
                                  key=key, folder=folder, device=device, progress=progress)
    shared = all_gather_json({"states": {str(c): s for c, s in states.items()}, "info": info}, world, device)
    every = {int(c): s for part in shared for c, s in part["states"].items()}
    out = gather(attack, every, x.shape[0], chunk_size)
    messages += attack.extra_warnings(out.cascade)
    sanity.check_invariants(out.robust, out.clean, attack.config["eps"])
    infos = [part["info"] for part in shared]
    out.timings.update(checks_s=checks_s, resumed_from=_resume_point(infos, len(ranges)),
                       steps_run=sum(i["steps_run"] for i in infos), world_size=world,
                       chunks_by_rank=[i["chunks"] for i in infos])
    out.warnings = messages
    return out


def _resume_point(infos: Sequence[Mapping[str, Any]], n_chunks: int) -> dict[str, int] | None:
    """The first (chunk, step) any rank had to run after loading saved work (None: no rank found any)."""
    if not any(i["loaded"] for i in infos):
        return None
    todo = [i["first_todo"] for i in infos if i["first_todo"] is not None]
    return min(todo, key=lambda t: t["chunk"]) if todo else {"chunk": n_chunks, "attack_index": 0}


def run_chunks(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunks: Sequence[int], *,
               seed: int, chunk_size: int, key: str, folder: Path | None, device: torch.device,
               progress: bool = True) -> tuple[dict[int, dict], dict[str, Any]]:
    """Run the unfinished steps of each chunk in ``chunks``; returns ``{chunk: state}`` and resume info.

    The info holds ``chunks``, ``loaded`` (some saved state was found), ``first_todo`` (the first step that
    had to run, or None), ``steps_run`` and ``resumed_from`` (where this call picked up saved work).
    """
    ranges = chunk_ranges(x.shape[0], chunk_size)
    per_chunk = sum(attack.planned(s) for s in attack.steps)
    bar = AttackProgress(len(chunks) * per_chunk, desc=attack.label, enabled=progress)
    states: dict[int, dict] = {}
    loaded, first_todo, steps_run = False, None, 0
    for c in chunks:
        start, stop = ranges[c]
        path = folder / f"chunk-{c:05d}.json" if folder is not None else None
        state = load_state(path, key, schema=CHUNK_STATE_SCHEMA)
        loaded = loaded or state is not None
        if first_todo is None and (state is None or state["next_attack"] < len(attack.steps)):
            first_todo = {"chunk": c, "attack_index": 0 if state is None else state["next_attack"]}
        if state is None:
            state = {"schema": CHUNK_STATE_SCHEMA, "key": key, "chunk": c, "start": start, "stop": stop,
                     "seed": chunk_seed(seed, c), "clean": None, "robust": None, "next_attack": 0,
                     "counts": {}, "seconds": {}}
        steps_run += _run_chunk(attack, model, x[start:stop], y[start:stop], state, path, device, bar,
                                f"{c + 1}/{len(ranges)}")
        states[c] = state
    bar.close()
    info = {"chunks": list(chunks), "loaded": loaded, "first_todo": first_todo, "steps_run": steps_run}
    info["resumed_from"] = _resume_point([info], len(ranges))
    return states, info


def _run_chunk(attack: Attack, model, x, y, state: dict, path: Path | None, device, bar: AttackProgress,
               label: str) -> int:
    """The clean pass and the remaining steps of one chunk, saving after each; returns the steps run."""
    if state["clean"] is None:
        t0 = time.perf_counter()
        with torch.no_grad():
            flags = y.to(device).eq(model(x.clone().to(device)).max(dim=1)[1]).cpu()
        state.update(clean=pack_flags(flags), robust=pack_flags(flags))
        state["seconds"]["clean"] = time.perf_counter() - t0
        save_state(path, state)
    robust = unpack_flags(state["robust"])
    for step in attack.steps[: state["next_attack"]]:
        bar.skip(attack.planned(step))
    ran = 0
    for index in range(state["next_attack"], len(attack.steps)):
        step = attack.steps[index]
        t0 = time.perf_counter()
        bar.note(chunk=label, attack=step, robust=f"{int(robust.sum())}/{robust.numel()}")
        with bar.step(model, attack.planned(step), attack.per_iteration(step)):
            robust = attack.run_step(step, model, x, y, robust, state["seed"], device) & robust
        ran += 1
        state["robust"] = pack_flags(robust)
        state["counts"][step] = int(robust.sum())
        state["seconds"][step] = time.perf_counter() - t0
        state["next_attack"] = index + 1
        save_state(path, state)
    return ran


def gather(attack: Attack, states: Mapping[int, dict], n: int, chunk_size: int) -> AttackRun:
    """Flags of every chunk in subset order, the cascade and the summed timings (every chunk must be done)."""
    ranges = chunk_ranges(n, chunk_size)
    missing = [c for c in range(len(ranges)) if c not in states]
    if missing:
        raise ValueError(f"chunks {missing[:5]} have no state; run every chunk before gathering")
    clean = torch.zeros(n, dtype=torch.bool)
    robust = torch.zeros(n, dtype=torch.bool)
    counts = dict.fromkeys(attack.steps, 0)
    seconds: dict[str, float] = {"clean": 0.0, **dict.fromkeys(attack.steps, 0.0)}
    for c, (start, stop) in enumerate(ranges):
        state = states[c]
        clean[start:stop] = unpack_flags(state["clean"])
        robust[start:stop] = unpack_flags(state["robust"])
        for step in attack.steps:
            counts[step] += state["counts"][step]
        for name, value in state["seconds"].items():
            seconds[name] = seconds.get(name, 0.0) + value
    cascade = {"clean": int(clean.sum()) / n, **{s: counts[s] / n for s in attack.steps}}
    attack_s = sum(seconds[s] for s in attack.steps)
    units = n * sum(attack.planned(s) for s in attack.steps)
    timings = {"clean_s": seconds["clean"], "attacks_s": {s: seconds[s] for s in attack.steps},
               "attack_s": attack_s, "image_steps_per_s": units / attack_s if attack_s > 0 else None}
    return AttackRun(robust=robust, clean=clean, cascade=cascade, timings=timings, warnings=[])
