"""Text-guided patch attention maps of an OpenCLIP ViT (the map TGA-ZSR and Comp-TGA align).

The patch tokens are read with a forward hook on ``visual.ln_post`` (which, when ``final_ln_after_pool`` is off,
sees every token) and projected with ``visual.proj``. ``capture_ln_post`` always removes its hook, even when the
forward pass raises. ``encode_with_tokens`` returns the model's own image embedding and the projected tokens from
one forward pass, so the pass that gives the logits also gives the map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from grace_bench.errors import UserError

NORM_AXES = ("token", "feature")
PREFIX_TOKENS = 1  # OpenCLIP's ViT puts one class token before the patch tokens


class TokenCapture:
    """Holds the ``visual.ln_post`` output (B, 1 + N, width) of the latest forward pass inside the context."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.value = output

    def take(self) -> torch.Tensor:
        """The captured tokens; a RuntimeError when no forward pass ran since the last ``take``."""
        if self.value is None:
            raise RuntimeError("no forward pass of the vision tower ran inside capture_ln_post")
        out, self.value = self.value, None
        return out


def vision_tower(model: nn.Module) -> nn.Module:
    """``model.visual`` when it is an OpenCLIP ViT whose ``ln_post`` sees every token; else a UserError."""
    visual = getattr(model, "visual", None)
    needed = ("ln_post", "proj", "patch_size", "conv1")
    if visual is None or not all(hasattr(visual, a) for a in needed) or getattr(visual, "proj", None) is None:
        raise UserError("text-guided attention maps need an OpenCLIP ViT with visual.ln_post and visual.proj; "
                        "use a ViT base model (e.g. ViT-B-32) for tga-zsr / comp-tga")
    if getattr(visual, "final_ln_after_pool", False) or getattr(visual, "attn_pool", None) is not None:
        raise UserError("text-guided attention maps need visual.ln_post to see every token "
                        "(final_ln_after_pool off, no attention pooling); use a CLIP ViT such as ViT-B-32")
    return visual


@contextlib.contextmanager
def capture_ln_post(model: nn.Module) -> Iterator[TokenCapture]:
    """Hook ``model.visual.ln_post`` for the duration of the block; the hook is removed on every exit path."""
    capture = TokenCapture()
    handle = vision_tower(model).ln_post.register_forward_hook(capture.hook)
    try:
        yield capture
    finally:
        handle.remove()


def project_tokens(model: nn.Module, ln_out: torch.Tensor) -> torch.Tensor:
    """``ln_post`` output (B, 1 + N, width) times ``visual.proj``: projected tokens (B, 1 + N, D) in fp32."""
    proj = vision_tower(model).proj
    return ln_out.float() @ proj.float()


def encode_with_tokens(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of normalised ``pixels``: (image embedding (B, D), projected tokens (B, 1 + N, D) fp32)."""
    with capture_ln_post(model) as capture:
        embedding = model.encode_image(pixels)
    return embedding, project_tokens(model, capture.take())


def patch_grid(model: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of the patch grid for images of ``image_size`` (derived from the model's patch size)."""
    visual = vision_tower(model)
    patch = visual.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return int(image_size[0]) // int(ph), int(image_size[1]) // int(pw)


def text_attention_map(tokens: torch.Tensor, text: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], *,
                       norm_axis: str = "token", eps: float = 1e-12) -> torch.Tensor:
    """Flattened text-guided attention maps (B, H*W) in [0, 1], computed in fp32.

    ``tokens``: projected tokens (B, 1 + N, D), class token first; ``text``: one text embedding per image (B, D).
    Steps (TGA-ZSR's map): normalise the tokens over the token axis (``norm_axis="token"``, as the official code
    does) or per token (``"feature"``); score each patch token by its dot product with the text; min-max the N
    scores of each image (``eps`` guards a constant map); reshape to ``grid``; upsample bilinearly to ``size``.
    """
    if norm_axis not in NORM_AXES:
        raise UserError(f"tga_norm_axis must be one of {', '.join(NORM_AXES)}, got {norm_axis!r}")
    tokens, text = tokens.float(), text.float()
    rows, cols = grid
    if tokens.dim() != 3 or tokens.shape[1] != PREFIX_TOKENS + rows * cols:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not hold 1 + {rows}x{cols} tokens")
    z = tokens / tokens.norm(dim=1 if norm_axis == "token" else 2, keepdim=True).clamp_min(eps)
    scores = torch.einsum("bpd,bd->bp", z[:, PREFIX_TOKENS:], text)
    low, high = scores.amin(dim=1, keepdim=True), scores.amax(dim=1, keepdim=True)
    scores = (scores - low) / (high - low + eps)
    maps = scores.reshape(-1, 1, rows, cols)
    maps = F.interpolate(maps, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return maps.flatten(1)


def map_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch mean of the (unsquared) L2 distance between flattened maps: TGA-ZSR's alignment term."""
    return (a - b).norm(dim=1).mean()
