"""Run-directory checkpoints: atomic safetensors + trainer state, keep the last K, find the latest, RNG capture.

Layout (see docs/INTERFACES.md)::

    runs/NAME/config.json                         fully resolved config ("arch", "base", "method", ...)
    runs/NAME/model.safetensors                   merged OpenCLIP state dict of the latest checkpoint
    runs/NAME/checkpoints/step_000123/model.safetensors     merged OpenCLIP state dict at that step
    runs/NAME/checkpoints/step_000123/adapters.safetensors  LoRA factors (LoRA runs only)
    runs/NAME/checkpoints/step_000123/trainer_state.pt      optimizer, scheduler, RNG, step, method state
    runs/NAME/checkpoints/step_000123/config.json

A checkpoint directory is written under a temporary name and renamed into place, so a directory
called ``step_*`` is always complete; a kill mid-write leaves only a ``.tmp-*`` directory, removed on
the next save. Re-saving an existing step renames the old directory aside (``.old-step_*``), renames the
new one in, then deletes the old one: a kill between the two renames leaves the old directory, which
``list_checkpoints`` still finds and the next save puts back.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grace_bench.errors import UserError
from grace_bench.utils.atomic import atomic_path, atomic_save_safetensors, atomic_torch_save, atomic_write_json

_STEP_DIR = re.compile(r"^step_(\d+)$")
_OLD_DIR = re.compile(r"^\.old-step_(\d+)-\d+$")  # a step directory renamed aside while it was re-saved
MODEL_FILE = "model.safetensors"
ADAPTER_FILE = "adapters.safetensors"
STATE_FILE = "trainer_state.pt"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first.

    A ``.old-step_N-*`` directory (left by a kill in the middle of re-saving step N) stands in for
    ``step_N`` when no complete ``step_N`` exists.
    """
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found: dict[int, Path] = {}
    aside: dict[int, Path] = {}
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name) or _OLD_DIR.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            (found if child.name.startswith("step_") else aside)[int(m.group(1))] = child
    for step, path in aside.items():
        found.setdefault(step, path)
    return sorted(found.items())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    config: dict[str, Any],
    adapters: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``run_dir/model.safetensors`` at it, prune to ``keep_last``."""
    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    recover_interrupted(root)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    tmp.mkdir()
    try:
        atomic_save_safetensors(tmp / MODEL_FILE, model_state, metadata=metadata)
        if adapters:
            atomic_save_safetensors(tmp / ADAPTER_FILE, adapters, metadata=metadata)
        atomic_torch_save(tmp / STATE_FILE, trainer_state)
        atomic_write_json(tmp / "config.json", config)
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_model(final / MODEL_FILE, Path(run_dir) / MODEL_FILE)
    prune_checkpoints(run_dir, keep_last)
    return final


def _swap_in(new: Path, final: Path) -> None:
    """Rename the complete directory ``new`` to ``final``; an existing ``final`` stays loadable throughout."""
    if not final.exists():
        os.replace(new, final)
        return
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old, final)  # put the previous checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted(root: Path) -> None:
    """Undo what a killed save left in ``root``: put an ``.old-step_*`` back if its step is gone, drop temp dirs."""
    for child in root.iterdir():
        m = _OLD_DIR.match(child.name)
        if not m:
            continue
        final = root / f"step_{int(m.group(1)):06d}"
        if (final / STATE_FILE).is_file():
            shutil.rmtree(child, ignore_errors=True)  # the new checkpoint made it in; the old one is garbage
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(child, final)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def publish_model(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a copy of ``src`` (a hard link when the filesystem allows, else a byte copy)."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints."""
    ckpts = list_checkpoints(run_dir)
    for _, path in ckpts[: max(0, len(ckpts) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file on CPU; an unreadable file is a UserError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError: any failure means a bad file
        raise UserError(f"cannot load {path} ({_first_line(exc)}); the file is missing or corrupt: delete its "
                        "checkpoint folder to fall back to the previous one, or start a new run") from None


STATE_TYPES = {"step": int, "optimizer": dict, "scheduler": dict, "rng": (dict, list)}


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory (``torch.load(weights_only=True)``), checked for its keys."""
    path = Path(ckpt_dir) / STATE_FILE
    fix = f"delete {ckpt_dir} to resume from the previous checkpoint, or start a new run"
    if not path.is_file():
        raise UserError(f"{path} is missing; the checkpoint is incomplete, {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling, zip and EOF errors all mean a corrupt file
        raise UserError(f"{path} is corrupt ({_first_line(exc)}); {fix}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a trainer state; {fix}")
    for key, kind in STATE_TYPES.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise UserError(f"{path} has no valid '{key}' entry; {fix}")
    if state["step"] < 0:
        raise UserError(f"{path} has a negative step; {fix}")
    return state


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``config.json`` as a dict; a garbled or non-object file is a UserError naming it and the fix."""
    path = Path(run_dir) / "config.json"
    latest = latest_checkpoint(run_dir)
    if latest is not None and (latest / "config.json").is_file():
        fix = f"copy {latest / 'config.json'} (saved with the last checkpoint) over it, or start a new --out"
    else:
        fix = "delete it (the run has no checkpoint yet, so it restarts from step 0), or start a new --out"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--resume: {path} is unreadable ({_first_line(exc)}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"--resume: {path} holds a JSON {type(data).__name__}, not the run's config object; {fix}")
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states in a ``weights_only``-loadable form."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": str(np_kind), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached": float(np_cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
