"""Build ``ClipModel`` objects from architecture names and state dicts."""

from __future__ import annotations

import open_clip
import torch

from grace_bench.models.clip_model import ClipModel, register_model_configs
from grace_bench.utils.transforms import pixel_preprocess


def build_clip_model(
    arch: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    *,
    spec: str | None = None,
    pretrained: str | None = None,
) -> ClipModel:
    """Create OpenCLIP ``arch`` (optionally with a pretrained tag), load ``state_dict`` if given, eval mode."""
    register_model_configs()
    model = open_clip.create_model(arch, pretrained=pretrained)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        preprocess=pixel_preprocess(image_size, cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        image_size=image_size,
        arch=arch,
        spec=spec or arch,
    )
