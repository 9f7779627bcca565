"""Build ``ClipModel`` objects from architecture names and state dicts."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import open_clip
import torch

from grace_bench.models.clip_model import ClipModel, register_model_configs
from grace_bench.utils.transforms import pixel_preprocess

# OpenCLIP's create_model logs this (on the root logger) whenever it built a model without loading weights.
RANDOM_INIT_WARNING = "No pretrained weights loaded for model"


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(RANDOM_INIT_WARNING)


@contextmanager
def no_random_init_warning() -> Iterator[None]:
    """Drop OpenCLIP's "No pretrained weights loaded ... initialized randomly" warning inside the block only.

    Use it around ``open_clip.create_model`` when we load the weights ourselves right after (or want a random
    init); every other log record, and that warning outside the block, passes unchanged.
    """
    root = logging.getLogger()  # OpenCLIP calls logging.warning(), i.e. logs on the root logger
    drop = _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_clip_model(
    arch: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    *,
    spec: str | None = None,
    pretrained: str | None = None,
) -> ClipModel:
    """Create OpenCLIP ``arch`` (optionally with a pretrained tag), load ``state_dict`` if given, eval mode."""
    register_model_configs()
    if state_dict is not None:
        with no_random_init_warning():  # the weights come from state_dict
            model = open_clip.create_model(arch, pretrained=pretrained)
        model.load_state_dict(state_dict, strict=True)
    else:
        model = open_clip.create_model(arch, pretrained=pretrained)
    return clip_from_open_clip(model, arch=arch, spec=spec or arch)


def clip_from_open_clip(model: torch.nn.Module, *, arch: str, spec: str,
                        tokenizer_name: str | None = None) -> ClipModel:
    """Wrap an OpenCLIP model as a ``ClipModel`` in eval mode: its tokenizer, pixel preprocess and normalisation."""
    model.eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(tokenizer_name or arch),
        preprocess=pixel_preprocess(image_size, cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        image_size=image_size,
        arch=arch,
        spec=spec,
    )
