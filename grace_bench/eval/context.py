"""Build (and cache) the zero-shot classifier for a suite dataset.

Heads are cached in memory and on disk by (checkpoint fingerprint, templates, class names): an
ImageNet head costs 80,000 text forwards and must never be computed twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from grace_bench.data.suites import DatasetSpec, Suite
from grace_bench.models.clip_model import ClipModel
from grace_bench.models.zero_shot import ZeroShotClassifier, build_zero_shot_head
from grace_bench.utils.atomic import atomic_save_safetensors
from grace_bench.utils.hashing import text_list_hash

_MEMORY: dict[tuple[str, str, str], torch.Tensor] = {}


def head_cache_key(fingerprint: str, templates: Sequence[str], classnames: Sequence[str]) -> tuple[str, str, str]:
    return fingerprint, text_list_hash(templates), text_list_hash(classnames)


def head_cache_dir() -> Path:
    from grace_bench.utils.cache import cache_dir

    return cache_dir() / "heads"


def cached_head(
    clip: ClipModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    use_disk: bool = True,
) -> torch.Tensor:
    """The (D, C) zero-shot head of ``clip``'s own text tower, from cache when possible.

    The checkpoint's recorded head transform (``clip.info["head_transform"]``, e.g. LAAT's anchor expansion)
    is applied after template averaging; the caches hold the untransformed head.
    """
    from grace_bench.models.head_transform import apply_head_transform

    transform = clip.info.get("head_transform")
    key = head_cache_key(clip.fingerprint(), templates, classnames)
    if key in _MEMORY:
        return apply_head_transform(_MEMORY[key].to(device), transform)
    path = head_cache_dir() / ("-".join(k[:16] for k in key) + ".safetensors")
    if use_disk and path.exists():
        from safetensors.torch import load_file

        head = load_file(str(path))["head"]
    else:
        head = build_zero_shot_head(
            clip.model, clip.tokenizer, list(classnames), list(templates), device=device, progress=progress
        ).cpu()
        if use_disk:
            atomic_save_safetensors(path, {"head": head}, metadata={"fingerprint": clip.fingerprint()})
    _MEMORY[key] = head
    return apply_head_transform(head.to(device), transform)


def classifier_for(
    clip: ClipModel,
    suite: Suite,
    dataset: DatasetSpec | None = None,
    templates: Sequence[str] | None = None,
    classnames: Sequence[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ZeroShotClassifier:
    """The pixel-space zero-shot classifier of ``clip`` for ``suite`` (projected to ``dataset``'s class subset)."""
    head = cached_head(
        clip, classnames or suite.classnames, templates or suite.templates, device=device, progress=progress
    )
    subset = dataset.class_subset if dataset is not None else None
    return ZeroShotClassifier(clip.model, head, clip.mean, clip.std, class_subset=subset).to(device).eval()
