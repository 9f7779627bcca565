"""Curvature curriculum: GN-diagonal proxy on a model with known per-layer gradient scales, EMA, ranks."""

from __future__ import annotations

import io
import logging

import pytest
import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.finetune.grace.curvature import (
    CurriculumSettings,
    CurvatureCurriculum,
    allocate_ranks,
    gauss_newton_diag_proxy,
    measure_layer_curvature,
)

SCALES = [0.3, 2.0, 0.05, 1.0, 4.0, 0.5, 0.1, 3.0, 0.7, 1.5]  # layer l's output is multiplied by SCALES[l]


def _scaled_parallel_model(seed=0, d=6, r=3, c=4):
    """logits = sum_l s_l * x A_l^T B_l^T with identical factors: dL/d(A_l, B_l) = s_l * (common gradient)."""
    g = torch.Generator().manual_seed(seed)
    a0 = torch.randn(r, d, generator=g)
    b0 = torch.randn(c, r, generator=g)
    factors = [[a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)] for _ in SCALES]

    def logits_fn(x):
        return sum(s * (x @ a.T @ b.T) for s, (a, b) in zip(SCALES, factors))

    x = torch.randn(16, d, generator=g)
    y = torch.randint(0, c, (16,), generator=g)
    return logits_fn, factors, x, y


def test_proxy_scales_with_squared_layer_scale():
    logits_fn, factors, x, y = _scaled_parallel_model()
    h = measure_layer_curvature(logits_fn, x, y, factors)
    ratios = h / h[3]  # layer 3 has scale 1
    expected = torch.tensor(SCALES) ** 2
    assert torch.allclose(ratios, expected, rtol=1e-4)
    assert all(p.grad is None for layer in factors for p in layer)  # .grad untouched


def test_proxy_matches_manual_backward():
    logits_fn, factors, x, y = _scaled_parallel_model(seed=1)
    h = measure_layer_curvature(logits_fn, x, y, factors)
    F.cross_entropy(logits_fn(x), y).backward()
    for l, (a, b) in enumerate(factors):
        manual = x.shape[0] * torch.cat([a.grad.flatten(), b.grad.flatten()]).pow(2).mean()
        assert h[l].item() == pytest.approx(manual.item(), rel=1e-5)


def test_proxy_ignores_missing_grads_and_rejects_empty():
    g = torch.ones(2, 2)
    assert gauss_newton_diag_proxy([g, None], n_v=3).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no gradients"):
        gauss_newton_diag_proxy([None], n_v=3)


def test_percentile_allocation_top_and_bottom_fifth():
    ranks = allocate_ranks([s * s for s in SCALES], top_pct=80, bottom_pct=20, ranks=(0, 2, 4))
    # order of scales: 4.0 and 3.0 are the top 20%, 0.05 and 0.1 the bottom 20%
    assert ranks == [2, 2, 0, 2, 4, 2, 0, 4, 2, 2]
    assert allocate_ranks([1.0] * 5, top_pct=80, bottom_pct=20, ranks=(0, 2, 4)) == [2] * 5  # ties -> middle
    assert allocate_ranks([3, 1, 2, 5, 4], top_pct=60, bottom_pct=40, ranks=(1, 2, 3)) == [2, 1, 1, 3, 3]


def test_curriculum_on_known_model_refreshes_and_logs(caplog):
    logits_fn, factors, x, y = _scaled_parallel_model()
    names = [f"layer{l}" for l in range(len(SCALES))]
    cur = CurvatureCurriculum(names, CurriculumSettings(refresh_every=5))
    cur.update(measure_layer_curvature(logits_fn, x, y, factors))
    with caplog.at_level(logging.INFO, logger="grace_bench.finetune.grace.curvature"):
        alloc = cur.maybe_refresh(0)
    assert alloc == dict(zip(names, [2, 2, 0, 2, 4, 2, 0, 4, 2, 2]))
    assert "rank allocation at step 0" in caplog.text
    assert cur.history[0]["counts"] == {"0": 2, "2": 6, "4": 2}
    assert cur.maybe_refresh(3) is None  # not a refresh step
    caplog.clear()
    assert cur.maybe_refresh(5) is None  # same allocation: no change, no log
    assert caplog.text == ""
    # Flip the curvature: layer 2 becomes the sharpest. The EMA needs several updates to move it to the top.
    flipped = torch.tensor([s * s for s in SCALES])
    flipped[2] = 100.0
    for _ in range(30):
        cur.update(flipped)
    alloc = cur.maybe_refresh(10)
    assert alloc is not None and alloc["layer2"] == 4 and alloc["layer7"] == 2
    assert len(cur.history) == 2


def test_ema_arithmetic():
    cur = CurvatureCurriculum(["a", "b"], CurriculumSettings(beta=0.9))
    cur.update(torch.tensor([1.0, 2.0]))
    cur.update(torch.tensor([3.0, 0.0]))
    assert torch.allclose(cur.ema, torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 0]))
    with pytest.raises(ValueError, match="expected 2"):
        cur.update(torch.ones(3))
    with pytest.raises(RuntimeError):
        CurvatureCurriculum(["a"]).maybe_refresh(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 0.8}, "0.85-0.95"),
        ({"beta": 0.99}, "0.85-0.95"),
        ({"refresh_every": 0}, "K=0"),
        ({"top_pct": 20, "bottom_pct": 80}, "percentiles"),
        ({"ranks": (0, 2, 8)}, "ranks"),
        ({"ranks": (2, 0, 4)}, "ranks"),
    ],
)
def test_settings_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        CurvatureCurriculum(["a"], CurriculumSettings(**kwargs))


def test_state_dict_round_trip_is_weights_only_safe():
    cur = CurvatureCurriculum(["a", "b", "c"], CurriculumSettings(refresh_every=2))
    cur.update(torch.tensor([1.0, 5.0, 3.0]))
    cur.maybe_refresh(0)
    buf = io.BytesIO()
    torch.save(cur.state_dict(), buf)
    buf.seek(0)
    restored = CurvatureCurriculum(["a", "b", "c"], CurriculumSettings(refresh_every=2))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(restored.ema, cur.ema) and restored.ranks == cur.ranks and restored.history == cur.history
    with pytest.raises(UserError, match="LoRA targets"):
        CurvatureCurriculum(["x", "y", "z"]).load_state_dict(cur.state_dict())
