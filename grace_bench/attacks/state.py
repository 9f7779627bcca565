"""What every attack shares around the loop: model facts, the state key and the per-chunk state files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grace_bench.utils.atomic import atomic_write_json


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


def load_state(path: Path | None, key: str, schema: str) -> dict | None:
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
