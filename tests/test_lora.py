"""LoRA as weight parametrizations: identity at init, merge == unmerged, the attention functional path, dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.models.loading import build_clip_model
from grace_bench.models.lora import (
    LoRAConfig,
    apply_lora,
    load_lora_state_dict,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge,
    remove_lora,
)


def _randomise(layers, std=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layers.values():
            p.lora_B.copy_(torch.randn(p.lora_B.shape, generator=g) * std)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 16, 16, generator=g), torch.randint(1, 400, (2, 16), generator=g)


def test_targets_and_identity_at_init(tiny_clip):
    model = tiny_clip.model.eval()
    x, t = _inputs()
    before_img, before_txt = model.encode_image(x), model.encode_text(t)
    layers = apply_lora(model, LoRAConfig(rank=4))
    # tiny-clip's vision tower has 2 blocks x (attn in, attn out, mlp fc, mlp proj); the text tower is untouched
    assert len(layers) == 8
    assert all(n.startswith("visual.transformer.resblocks.") for n in layers)
    assert {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in layers} == {
        "attn.in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight"}
    p = layers["visual.transformer.resblocks.0.attn.in_proj_weight"]
    assert p.scale == 2.0  # alpha defaults to 2r
    assert p.lora_A.shape == (4, 32) and p.lora_B.shape == (96, 4) and torch.count_nonzero(p.lora_B) == 0
    assert torch.equal(model.encode_image(x), before_img)
    assert torch.equal(model.encode_text(t), before_txt)


def test_weight_is_w0_plus_scaled_ba(tiny_clip):
    model = tiny_clip.model
    w0 = model.visual.transformer.resblocks[1].mlp.c_fc.weight.detach().clone()
    layers = apply_lora(model, LoRAConfig(rank=3, alpha=12.0))
    _randomise(layers)
    p = layers["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    expected = w0 + (12.0 / 3) * p.lora_B.detach() @ p.lora_A.detach()
    torch.testing.assert_close(model.visual.transformer.resblocks[1].mlp.c_fc.weight, expected, rtol=0, atol=1e-6)
    assert torch.equal(p.base_weight(), w0)


def test_out_proj_adapter_reaches_functional_attention(tiny_clip):
    """nn.MultiheadAttention reads out_proj.weight inside F.multi_head_attention_forward: the adapter must show."""
    model = tiny_clip.model.eval()
    x, _ = _inputs()
    before = model.encode_image(x)
    layers = apply_lora(model, LoRAConfig(rank=2, targets=("attn_out",)))
    assert len(layers) == 2
    _randomise(layers)
    after = model.encode_image(x)
    assert (after - before).abs().max() > 1e-3
    # independent reference: the block's attention computed by hand with the merged weight
    blk = model.visual.transformer.resblocks[0]
    h = torch.randn(2, 5, 32)
    merged_out = merge(model)["visual.transformer.resblocks.0.attn.out_proj.weight"]
    ref, _ = F.multi_head_attention_forward(
        h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), 32, blk.attn.num_heads,
        blk.attn.in_proj_weight, blk.attn.in_proj_bias, None, None, False, 0.0,
        merged_out, blk.attn.out_proj.bias, training=False, need_weights=False)
    got = blk.attn(h, h, h, need_weights=False)[0]
    torch.testing.assert_close(got, ref.transpose(0, 1), rtol=0, atol=1e-6)


def test_merge_equals_unmerged_both_towers(tiny_clip):
    model = tiny_clip.model.eval()
    plain_keys = set(model.state_dict())
    layers = apply_lora(model, LoRAConfig(rank=4, towers=("vision", "text")))
    assert len(layers) == 8 + 4  # text tower: 1 block
    _randomise(layers)
    x, t = _inputs()
    img, txt = model.encode_image(x), model.encode_text(t)
    sd = merge(model)
    assert set(sd) == plain_keys
    fresh = build_clip_model("tiny-clip", sd).model.eval()
    torch.testing.assert_close(fresh.encode_image(x), img, rtol=0, atol=1e-5)
    torch.testing.assert_close(fresh.encode_text(t), txt, rtol=0, atol=1e-5)
    # merge() does not modify the adapted model; remove_lora folds in place
    torch.testing.assert_close(model.encode_image(x), img, rtol=0, atol=0)
    remove_lora(model)
    assert not lora_layers(model) and set(model.state_dict()) == plain_keys
    torch.testing.assert_close(model.encode_image(x), img, rtol=0, atol=1e-5)


def test_only_factors_get_gradients_and_state_roundtrip(tiny_clip):
    model = tiny_clip.model.train()
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.requires_grad_(False)
    apply_lora(model, LoRAConfig(rank=2))
    params = lora_parameters(model)
    for p in params:
        p.requires_grad_(True)
    x, _ = _inputs()
    model.encode_image(x).pow(2).sum().backward()
    assert all(p.grad is not None for p in params)
    # B = 0 at init, so dL/dA = 0 and dL/dB != 0 (the standard LoRA start)
    assert all(torch.count_nonzero(p.grad) == 0 for p in params[0::2])
    assert all(torch.count_nonzero(p.grad) > 0 for p in params[1::2])
    w0 = model.visual.transformer.resblocks[0].attn.parametrizations.in_proj_weight.original
    assert w0.grad is None and not w0.requires_grad
    _randomise(lora_layers(model))
    other = build_clip_model("tiny-clip", base_sd).model
    apply_lora(other, LoRAConfig(rank=2))
    load_lora_state_dict(other, lora_state_dict(model))
    for key, value in merge(model).items():
        assert torch.equal(merge(other)[key], value), key
    with pytest.raises(UserError, match="does not match"):
        load_lora_state_dict(model, {"nope.lora_A": torch.zeros(1)})


def test_dropout_drops_input_columns_and_is_unbiased(tiny_clip):
    model = tiny_clip.model
    layers = apply_lora(model, LoRAConfig(rank=4, dropout=0.5, targets=("mlp_fc",)))
    _randomise(layers)
    p = layers["visual.transformer.resblocks.0.mlp.c_fc.weight"]
    module = model.visual.transformer.resblocks[0].mlp.c_fc
    full = p.lora_delta()
    model.train()
    torch.manual_seed(0)
    draws = torch.stack([module.weight.detach() - p.base_weight() for _ in range(4000)])
    # each draw zeroes whole input columns of dW and scales the kept ones by 1/(1-p)
    col_zero = (draws.abs().sum(dim=1) == 0)
    assert 0.35 < col_zero.float().mean() < 0.65
    kept = ~col_zero[0]
    torch.testing.assert_close(draws[0][:, kept], full[:, kept] / 0.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(draws.mean(0), full, rtol=0, atol=0.06 * full.abs().max().item())
    model.eval()
    torch.testing.assert_close(module.weight - p.base_weight(), full, rtol=0, atol=1e-6)


def test_extra_delta_adds_and_merge_ignores_it(tiny_clip):
    model = tiny_clip.model
    layers = apply_lora(model, LoRAConfig(rank=2))
    name = "visual.transformer.resblocks.1.attn.in_proj_weight"
    p = layers[name]
    module = model.visual.transformer.resblocks[1].attn
    base = module.in_proj_weight.detach().clone()
    extra = torch.randn_like(base)
    p.extra_delta = lambda: extra
    torch.testing.assert_close(module.in_proj_weight, base + extra)
    assert torch.equal(merge(model)[name], base)
    p.extra_delta = None
    assert torch.equal(module.in_proj_weight, base)
    assert "extra_delta" not in " ".join(model.state_dict())


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0}, "lora.rank"),
    ({"rank": 4, "targets": ("qkv",)}, "unknown target 'qkv'"),
    ({"rank": 4, "towers": ("audio",)}, "unknown tower 'audio'"),
    ({"rank": 4, "dropout": 1.0}, "lora.dropout"),
    ({"rank": 64}, "exceeds the smallest dimension"),
    ({"rank": 2, "targets": ("visual.nothing.*",)}, "matched no 2-D weight"),
])
def test_bad_config_names_the_field(tiny_clip, kwargs, match):
    with pytest.raises(UserError, match=match):
        apply_lora(tiny_clip.model, LoRAConfig(**kwargs))


def _qkv_layers(model, **kw):
    cfg = LoRAConfig(rank=2, alpha=1.0, targets=("attn_in",), towers=("vision", "text"), split_qkv=True,
                     scaling="sqrt", **kw)
    return apply_lora(model, cfg)


def test_split_qkv_adapter_equals_separate_q_k_v_updates(tiny_clip):
    """AdvCLIP-LoRA's layout: one rank-r adapter per q/k/v slice of in_proj_weight, scaled alpha/sqrt(r)."""
    import math

    model = tiny_clip.model.eval()
    packed = {n for n, _ in model.named_parameters() if n.endswith("attn.in_proj_weight")}
    layers = _qkv_layers(model)
    assert set(layers) == packed and any(n.startswith("visual.") for n in packed) and len(packed) >= 3
    _randomise(layers)
    for name, p in layers.items():
        assert p.slices == 3 and p.lora_A.shape[:2] == (3, 2) and p.scale == pytest.approx(1 / math.sqrt(2))
        w0 = p.base_weight().detach()
        d = w0.shape[1]
        q, k, v = (w0[i * d:(i + 1) * d] + (1 / math.sqrt(2)) * p.lora_B[i] @ p.lora_A[i] for i in range(3))
        module = model.get_submodule(name.rpartition(".")[0])
        torch.testing.assert_close(module.in_proj_weight, torch.cat([q, k, v]).detach())


def test_split_qkv_merge_reproduces_the_adapted_forward(tiny_clip):
    from grace_bench.models.loading import build_clip_model

    model = tiny_clip.model.eval()
    _randomise(_qkv_layers(model))
    x, t = _inputs()
    with torch.no_grad():
        adapted = model.encode_image(x), model.encode_text(t)
        plain = build_clip_model("tiny-clip").model.eval()
        plain.load_state_dict(merge(model), strict=True)
        torch.testing.assert_close(plain.encode_image(x), adapted[0])
        torch.testing.assert_close(plain.encode_text(t), adapted[1])


def test_split_qkv_dropout_draws_one_mask_per_slice(tiny_clip):
    layers = _qkv_layers(tiny_clip.model, dropout=0.5)
    p = next(iter(layers.values()))
    with torch.no_grad():
        p.lora_B.fill_(1.0)
        p.lora_A.fill_(1.0)
    torch.manual_seed(0)
    delta = p.lora_delta(dropout=True)
    d = delta.shape[1]
    kept = [(delta[i * d] != 0) for i in range(3)]  # a dropped input column is zero in every row of its slice
    assert not (torch.equal(kept[0], kept[1]) and torch.equal(kept[1], kept[2]))
    values = sorted(float(v) for v in delta.unique())  # B@A = r per entry; a kept column is scaled by 1/(1-p)
    assert values[0] == 0.0 and values[-1] == pytest.approx(2 * 2 * p.scale) and len(values) == 2


def test_scaling_rule_is_validated():
    with pytest.raises(UserError, match="lora.scaling"):
        LoRAConfig(rank=2, scaling="cube").validate()
