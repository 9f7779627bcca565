"""Image preprocessing in pixel space: resize + centre crop + to-tensor, with no Normalize."""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms as T

_INTERP = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def pixel_preprocess(image_size: int, interpolation: str = "bicubic") -> Callable:
    """PIL image -> float tensor (3, S, S) in [0, 1]: shortest-side resize, centre crop, RGB."""
    return T.Compose([
        T.Lambda(lambda im: im.convert("RGB")),
        T.Resize(image_size, interpolation=_INTERP.get(interpolation, T.InterpolationMode.BICUBIC)),
        T.CenterCrop(image_size),
        T.ToTensor(),
    ])
