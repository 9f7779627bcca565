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
the next save.
"""

from __future__ import annotations

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
MODEL_FILE = "model.safetensors"
ADAPTER_FILE = "adapters.safetensors"
STATE_FILE = "trainer_state.pt"


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


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
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    tmp.mkdir()
    try:
        atomic_save_safetensors(tmp / MODEL_FILE, model_state, metadata=metadata)
        if adapters:
            atomic_save_safetensors(tmp / ADAPTER_FILE, adapters, metadata=metadata)
        atomic_torch_save(tmp / STATE_FILE, trainer_state)
        atomic_write_json(tmp / "config.json", config)
        if final.exists():  # re-saving the same step (e.g. after a resume at that step)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_model(final / MODEL_FILE, Path(run_dir) / MODEL_FILE)
    prune_checkpoints(run_dir, keep_last)
    return final


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
    """Load a safetensors file on CPU."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint directory (``torch.load(weights_only=True)``)."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; the checkpoint is incomplete, delete {ckpt_dir} and resume again")
    return torch.load(path, map_location="cpu", weights_only=True)


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
