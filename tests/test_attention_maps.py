"""Text-guided attention maps (TGA-ZSR): the map on hand-built tokens, the ln_post hook and its removal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.models.attention_maps import (
    capture_ln_post,
    encode_with_tokens,
    map_distance,
    patch_grid,
    text_attention_map,
)

# one image: class token then a 2x2 grid of patch tokens, 2 features
TOKENS = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])
TEXT = torch.tensor([[1.0, 1.0]])


def test_token_axis_map_by_hand():
    # token-axis norms: feature 0 over all 5 tokens = sqrt(9+1+0+4+0) = sqrt(14); feature 1 = 1
    # patch scores <z_p, (1, 1)> = 1/sqrt14, 1, 2/sqrt14, 0 -> min 0, max 1: unchanged by min-max
    got = text_attention_map(TOKENS, TEXT, (2, 2), (2, 2))
    r = 1 / math.sqrt(14)
    torch.testing.assert_close(got, torch.tensor([[r, 1.0, 2 * r, 0.0]]))


def test_feature_axis_map_by_hand_and_constant_map_is_finite():
    # per-token norms: (1,0), (0,1), (1,0), (0,0) -> scores 1, 1, 1, 0 -> min-max unchanged
    got = text_attention_map(TOKENS, TEXT, (2, 2), (2, 2), norm_axis="feature")
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    flat = torch.ones(1, 5, 2)
    assert torch.equal(text_attention_map(flat, TEXT, (2, 2), (2, 2)), torch.zeros(1, 4))  # eps guard: no NaN
    with pytest.raises(UserError, match="tga_norm_axis"):
        text_attention_map(TOKENS, TEXT, (2, 2), (2, 2), norm_axis="tokens")


def test_map_upsamples_bilinearly_to_the_image_size():
    got = text_attention_map(TOKENS, TEXT, (2, 2), (4, 6))
    small = text_attention_map(TOKENS, TEXT, (2, 2), (2, 2)).reshape(1, 1, 2, 2)
    ref = F.interpolate(small, size=(4, 6), mode="bilinear", align_corners=False).flatten(1)
    assert got.shape == (1, 24)
    torch.testing.assert_close(got, ref)
    assert got.min() >= 0 and got.max() <= 1
    assert map_distance(got, got) == 0
    torch.testing.assert_close(map_distance(torch.ones(2, 4), torch.zeros(2, 4)), torch.tensor(2.0))


def test_hook_is_removed_on_exit_and_after_an_exception(tiny_clip):
    model = tiny_clip.model.eval()
    ln_post = model.visual.ln_post
    with capture_ln_post(model) as cap:
        assert len(ln_post._forward_hooks) == 1
        model.encode_image(torch.rand(2, 3, 16, 16))
        assert cap.take().shape == (2, 1 + 16, 32)
    assert len(ln_post._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with capture_ln_post(model):
            raise RuntimeError("boom")
    assert len(ln_post._forward_hooks) == 0
    with pytest.raises(RuntimeError):  # a failing forward pass (wrong channel count) also removes the hook
        encode_with_tokens(model, torch.rand(1, 2, 16, 16))
    assert len(ln_post._forward_hooks) == 0


def test_tokens_match_the_pooled_embedding_on_tiny_and_micro(tiny_clip, micro_clip):
    for clip, pooled in ((tiny_clip, "tok"), (micro_clip, "avg")):
        model = clip.model.eval()
        x = torch.rand(3, 3, clip.image_size, clip.image_size)
        with torch.no_grad():
            emb, tokens = encode_with_tokens(model, x)
            ref = model.encode_image(x)
        torch.testing.assert_close(emb, ref)
        from_tokens = tokens[:, 0] if pooled == "tok" else tokens[:, 1:].mean(dim=1)
        torch.testing.assert_close(from_tokens, ref.float(), rtol=1e-4, atol=1e-5)


def test_patch_grid_is_derived_from_the_model(tiny_clip, micro_clip):
    assert patch_grid(tiny_clip.model, (16, 16)) == (4, 4)
    assert patch_grid(micro_clip.model, (32, 32)) == (8, 8)  # micro-CLIP: 8x8 patches, not ViT-B/32's 7x7
    with pytest.raises(UserError, match="OpenCLIP ViT"):
        patch_grid(torch.nn.Linear(2, 2), (16, 16))
