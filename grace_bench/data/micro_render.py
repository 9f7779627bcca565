"""Rendering of 8x8 scikit-learn digits into 32x32 RGB images, plain and stylised.

All functions are pure and deterministic given a ``numpy.random.Generator``. Images are float32
arrays of shape (3, 32, 32) in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 32


def upscale(digits8: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """(N, 8, 8) ink intensities in [0, 16] -> (N, 32, 32) ink masks in [0, 1]."""
    t = torch.from_numpy(np.asarray(digits8, dtype=np.float32) / 16.0)[:, None]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(t, size=(SIZE, SIZE), mode=mode, **kwargs)
    return out[:, 0].clamp(0, 1).numpy()


def affine(masks: np.ndarray, rng: np.random.Generator, *, max_rot: float, max_shift: float,
           scale: tuple[float, float]) -> np.ndarray:
    """Random rotation (degrees), translation (fraction of size) and scale, per image."""
    n = masks.shape[0]
    ang = np.deg2rad(rng.uniform(-max_rot, max_rot, n))
    s = rng.uniform(scale[0], scale[1], n)
    tx, ty = rng.uniform(-max_shift, max_shift, (2, n)) * 2
    cos, sin = np.cos(ang) / s, np.sin(ang) / s
    theta = np.stack([np.stack([cos, -sin, tx], 1), np.stack([sin, cos, ty], 1)], 1).astype(np.float32)
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, SIZE, SIZE], align_corners=False)
    out = F.grid_sample(torch.from_numpy(masks[:, None].astype(np.float32)), grid, align_corners=False)
    return out[:, 0].clamp(0, 1).numpy()


def thicken(masks: np.ndarray, amount: int) -> np.ndarray:
    """Dilate (amount > 0) or erode (amount < 0) strokes with a 3x3 max-pool."""
    t = torch.from_numpy(masks[:, None])
    for _ in range(abs(amount)):
        t = F.max_pool2d(t, 3, 1, 1) if amount > 0 else -F.max_pool2d(-t, 3, 1, 1)
    return t[:, 0].numpy()


def blur(masks: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each mask (sigma in pixels)."""
    if sigma <= 0:
        return masks
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    t = torch.from_numpy(masks[:, None].astype(np.float32))
    t = F.conv2d(F.pad(t, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return t[:, 0].numpy()


def compose(masks: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Alpha-composite: (N,32,32) masks with per-image (N,3) or per-pixel (N,3,32,32) colours."""
    m = masks[:, None]
    fg = fg if fg.ndim == 4 else fg[:, :, None, None]
    bg = bg if bg.ndim == 4 else bg[:, :, None, None]
    return np.clip(m * fg + (1 - m) * bg, 0, 1).astype(np.float32)


def plain(masks: np.ndarray) -> np.ndarray:
    """White ink on black, the ID rendering."""
    return np.repeat(masks[:, None], 3, axis=1).astype(np.float32)


def random_colours(n: int, rng: np.random.Generator, min_contrast: float = 0.45) -> tuple[np.ndarray, np.ndarray]:
    """Flat foreground/background colour pairs whose luminance differs by at least ``min_contrast``."""
    fg = rng.uniform(0, 1, (n, 3))
    bg = rng.uniform(0, 1, (n, 3))
    lum = np.array([0.299, 0.587, 0.114])
    for i in range(n):
        while abs(fg[i] @ lum - bg[i] @ lum) < min_contrast:
            fg[i], bg[i] = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    return fg.astype(np.float32), bg.astype(np.float32)


def sobel_outline(masks: np.ndarray) -> np.ndarray:
    """Edge magnitude of each mask, normalised to [0, 1] per image."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    t = torch.from_numpy(masks[:, None].astype(np.float32))
    gx = F.conv2d(t, kx, padding=1)
    gy = F.conv2d(t, kx.transpose(2, 3), padding=1)
    mag = torch.sqrt(gx**2 + gy**2)[:, 0]
    mag = mag / mag.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]
    return mag.numpy()


def texture(n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-image random patterns (stripes, checkers, dots, waves) as (N,3,32,32) colour fields."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.empty((n, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        kind = rng.integers(4)
        period = rng.uniform(3, 7)
        ang = rng.uniform(0, np.pi)
        u = xx * np.cos(ang) + yy * np.sin(ang)
        if kind == 0:
            p = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
        elif kind == 1:
            p = ((xx // period + yy // period) % 2).astype(np.float32)
        elif kind == 2:
            p = ((np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)) > 0.3).astype(np.float32)
        else:
            p = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + 3 * np.sin(2 * np.pi * yy / (2 * period)))
        c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        out[i] = c1[:, None, None] * p + c2[:, None, None] * (1 - p)
    return out
