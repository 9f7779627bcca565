"""``ClipModel``: an OpenCLIP model bundled with its tokenizer, preprocess and normalisation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_DIR = Path(__file__).parent / "configs"
_REGISTERED = False


def register_model_configs() -> None:
    """Add grace-bench's own OpenCLIP model configs (``micro-clip``, ``tiny-clip``) to OpenCLIP's registry."""
    global _REGISTERED
    if not _REGISTERED:
        import open_clip  # here, not at the top: fingerprinting a weights file needs no OpenCLIP

        open_clip.add_model_config(CONFIG_DIR)
        _REGISTERED = True


@dataclass
class ClipModel:
    """An OpenCLIP model plus everything needed to feed it images in [0, 1] pixel space.

    ``preprocess`` maps a PIL image to a float tensor in [0, 1] (resize + crop, *no* Normalize);
    ``mean``/``std`` are the normalisation constants applied inside the classifier.
    """

    model: nn.Module
    tokenizer: Callable
    preprocess: Callable
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    arch: str
    spec: str
    base_spec: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """sha256 over the model's tensors (names, dtypes, shapes, bytes); cached after the first call.

        A recorded head transform (``info["head_transform"]``, LAAT) is hashed in too: the same weights under
        another zero-shot head are another classifier, so their results must not share a cache entry.
        """
        if self._fingerprint is None:
            fingerprint = state_dict_fingerprint(self.model.state_dict())
            transform = self.info.get("head_transform")
            if transform is not None:
                text = fingerprint + json.dumps(transform, sort_keys=True)
                fingerprint = hashlib.sha256(text.encode()).hexdigest()
            self._fingerprint = fingerprint
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Forget the cached fingerprint (call after changing the weights)."""
        self._fingerprint = None


def state_dict_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 hex digest of a state dict's tensors, independent of dict order and device."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
