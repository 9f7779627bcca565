"""Sharpness definitions and loss landscapes (origin, filter normalisation, resume, cache validation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grace_bench.errors import UserError
from grace_bench.geometry.landscape import (
    filter_normalized_direction,
    interpolation,
    landscape,
    load_directions,
    parse_range,
    save_directions,
)
from grace_bench.geometry.losses import loss_and_accuracy, select_params
from grace_bench.geometry.sharpness import average_sharpness, worst_case_sharpness


def _mlp(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x = torch.randn(48, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (48,))
    return net, x, y


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def _grad_norm(net, x, y, scale_by_weight=False):
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    if scale_by_weight:
        grads = [g * p.detach().abs() for g, p in zip(grads, net.parameters())]
    return float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))


def test_sharpness_at_rho_zero_is_zero_and_weights_restored():
    net, x, y = _mlp()
    params = select_params(net, "all")
    snap = _snapshot(net)
    avg = average_sharpness(net, (x, y), params, [0.0, 0.05], num_samples=3)
    worst = worst_case_sharpness(net, (x, y), params, [0.0, 0.05], steps=3)
    assert avg["sharpness"][0] == 0.0 and worst["sharpness"][0] == 0.0
    assert worst["sharpness"][1] > avg["sharpness"][1]
    assert "sphere" in avg["definition"] and "PGD" in worst["definition"]
    _assert_same_weights(net, snap)


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_step_worst_case_is_first_order_sam(adaptive):
    """With one normalised step from 0, max L(w + delta) - L(w) = rho * ||g|| (||g * |w| || adaptive) to O(rho^2)."""
    net, x, y = _mlp()
    rho = 1e-4
    res = worst_case_sharpness(net, (x, y), select_params(net, "all"), [rho], steps=1, adaptive=adaptive)
    expected = rho * _grad_norm(net, x, y, scale_by_weight=adaptive)
    assert res["sharpness"][0] == pytest.approx(expected, rel=2e-3)
    assert res["adaptive"] is adaptive


def test_m_sharpness_splits_data_into_chunks():
    net, x, y = _mlp()
    res = worst_case_sharpness(net, (x, y), select_params(net, "all"), [1e-4], steps=1, m=16)
    assert res["num_chunks"] == 3 and res["m"] == 16
    # first order: the mean over chunks of rho * ||g_chunk||
    expected = np.mean([1e-4 * _grad_norm(net, x[i:i + 16], y[i:i + 16]) for i in (0, 16, 32)])
    assert res["sharpness"][0] == pytest.approx(expected, rel=2e-3)


def test_average_sharpness_on_quadratic_matches_trace():
    """Least squares at its minimum: E L(w + delta) - L(w) = rho^2 tr(H) / (2 d) exactly."""
    torch.manual_seed(1)
    x = torch.randn(200, 5, dtype=torch.float64)
    target = torch.randn(200, dtype=torch.float64)
    lin = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.linalg.lstsq(x, target[:, None]).solution.T)

    def mse(out, t):
        return (out.squeeze(1) - t).pow(2).mean()

    rho = 0.3
    res = average_sharpness(lin, (x, target), select_params(lin, "all"), [rho], num_samples=200, loss_fn=mse, seed=4)
    hess_trace = float(2 * (x * x).sum() / x.shape[0])
    expected = rho**2 * hess_trace / (2 * 5)
    assert abs(res["sharpness"][0] - expected) < 4 * res["sharpness_se"][0]
    assert res["seed"] == 4 and len(res["samples"][0]) == 200


@pytest.mark.parametrize("reduction", ["control", "antithetic"])
def test_variance_reduced_average_sharpness_estimates_the_same_mean(reduction):
    net, x, y = _mlp()  # off the minimum: the first-order term g . delta is what makes plain draws noisy
    params = select_params(net, "all")
    snap = _snapshot(net)
    plain = average_sharpness(net, (x, y), params, [0.05], num_samples=60, variance_reduction="none", seed=2)
    reduced = average_sharpness(net, (x, y), params, [0.05], num_samples=30, variance_reduction=reduction, seed=2)
    assert reduced["variance_reduction"] == reduction and len(reduced["samples"][0]) == 30
    assert reduced["num_evaluations"] == (60 if reduction == "antithetic" else 30)
    assert reduced["num_gradients"] == (1 if reduction == "control" else 0) and plain["num_gradients"] == 0
    assert reduction in reduced["definition"] or "control variate" in reduced["definition"]
    assert reduced["sharpness_se"][0] < 0.1 * plain["sharpness_se"][0]
    gap = abs(reduced["sharpness"][0] - plain["sharpness"][0])
    assert gap < 4 * np.hypot(reduced["sharpness_se"][0], plain["sharpness_se"][0])
    _assert_same_weights(net, snap)
    with pytest.raises(UserError, match="variance reduction"):
        average_sharpness(net, (x, y), params, [0.05], variance_reduction="magic")


def test_worst_case_shares_the_first_step_without_changing_the_result():
    from grace_bench.geometry.sharpness import _pgd_max

    net, x, y = _mlp()
    params = select_params(net, "all")
    ps = [p for _, p in params]
    rhos = [0.0, 0.01, 0.05]
    res = worst_case_sharpness(net, (x, y), params, rhos, steps=4)
    with torch.no_grad():
        base = float(F.cross_entropy(net(x), y))
    gen = torch.Generator().manual_seed(0)
    for rho, got in zip(rhos, res["sharpness"]):
        alone = _pgd_max(net, [(x, y)], ps, rho, 4, 2.5 * rho / 4, False, False, gen, F.cross_entropy)
        assert got == pytest.approx(alone - base, rel=1e-10, abs=1e-14)
    assert res["base_loss"] == pytest.approx(base, rel=1e-12)


def test_bad_rho_is_a_user_error():
    net, x, y = _mlp()
    with pytest.raises(UserError, match="rho"):
        average_sharpness(net, (x, y), select_params(net, "all"), [-1.0])


def test_filter_normalised_direction():
    net, _, _ = _mlp()
    params = select_params(net, "all")
    d = filter_normalized_direction(params, seed=0)
    for name, p in params:
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            torch.testing.assert_close(d[name].norm(dim=1), p.detach().float().norm(dim=1))
    again = filter_normalized_direction(params, seed=0)
    assert all(torch.equal(d[k], again[k]) for k in d)


def test_landscape_origin_equals_model_loss(tiny_classifier):
    torch.manual_seed(0)
    batch = (torch.rand(12, 3, 16, 16), torch.randint(0, 10, (12,)))
    params = select_params(tiny_classifier, "vision")
    snap = _snapshot(tiny_classifier)
    base_loss, base_acc = loss_and_accuracy(tiny_classifier, [batch])
    dirs = [filter_normalized_direction(params, seed=s) for s in (1, 2)]
    one = landscape(tiny_classifier, batch, params, dirs[:1], [[-0.5, 0.0, 0.5]])
    two = landscape(tiny_classifier, batch, params, dirs, [[-0.5, 0.0], [0.0, 0.5]])
    assert one["loss"][1] == pytest.approx(base_loss, rel=1e-6)
    assert one["accuracy"][1] == base_acc
    assert two["loss"][1, 0] == pytest.approx(base_loss, rel=1e-6)
    assert one["loss"][0] != pytest.approx(base_loss)
    assert one["complete"] and two["loss"].shape == (2, 2)
    _assert_same_weights(tiny_classifier, snap)
    # the logit scale is not in the vision group, the class token is 1-d: zero direction
    assert torch.count_nonzero(dirs[0]["model.visual.class_embedding"]) == 0


def test_landscape_resumes_after_interruption_and_validates_cache(tmp_path):
    net, x, y = _mlp()
    params = select_params(net, "all")
    dirs = [filter_normalized_direction(params, seed=s) for s in (0, 1)]
    axes = [parse_range("-1:1:4"), parse_range("-1:1:3")]
    full = landscape(net, (x, y), params, dirs, axes)
    cache = tmp_path / "grid.npz"
    part = landscape(net, (x, y), params, dirs, axes, cache_path=cache, save_interval_s=0, max_points=5)
    assert not part["complete"] and part["done"].sum() == 5 and cache.exists()
    resumed = landscape(net, (x, y), params, dirs, axes, cache_path=cache, max_points=4)
    assert resumed["done"].sum() == 9  # it continued instead of starting over
    resumed = landscape(net, (x, y), params, dirs, axes, cache_path=cache)
    assert resumed["complete"]
    np.testing.assert_allclose(resumed["loss"], full["loss"], rtol=1e-12)
    np.testing.assert_array_equal(resumed["accuracy"], full["accuracy"])
    # a different grid (or direction) must not silently reuse the cache
    with pytest.raises(UserError, match="fresh=True"):
        landscape(net, (x, y), params, dirs, [parse_range("-1:1:5"), axes[1]], cache_path=cache)
    with pytest.raises(UserError, match="directions"):
        landscape(net, (x, y), params, dirs[::-1], axes, cache_path=cache)
    fresh = landscape(net, (x, y), params, dirs[::-1], axes, cache_path=cache, on_mismatch="recompute")
    assert fresh["complete"]


def test_landscape_interrupt_saves_partial_grid(tmp_path):
    net, x, y = _mlp()
    params = select_params(net, "all")
    dirs = [filter_normalized_direction(params, seed=0)]
    snap = _snapshot(net)
    calls = {"n": 0}

    def flaky_loss(out, t):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return F.cross_entropy(out, t)

    cache = tmp_path / "line.npz"
    with pytest.raises(KeyboardInterrupt):
        landscape(net, (x, y), params, dirs, [parse_range("-1:1:5")], cache_path=cache, loss_fn=flaky_loss)
    _assert_same_weights(net, snap)
    with np.load(cache) as z:
        assert z["done"].sum() == 2


def test_directions_roundtrip_and_validation(tmp_path):
    net, _, _ = _mlp()
    params = select_params(net, "all")
    dirs = [filter_normalized_direction(params, seed=s) for s in (0, 1)]
    path = tmp_path / "dirs.npz"
    save_directions(path, dirs, {"seed": 0})
    back = load_directions(path, params, 2)
    assert all(torch.equal(back[i][k], dirs[i][k].float()) for i in range(2) for k in dirs[i])
    other, _, _ = _mlp()
    other[0] = nn.Linear(6, 7).double()
    with pytest.raises(UserError, match="do not match"):
        load_directions(path, select_params(other, "all"), 2)


def _corrupt_npz_variants(good: bytes) -> dict[str, bytes]:
    """An NPZ's bytes damaged the ways a disk or a kill can: empty, truncated, garbage, flipped bytes."""
    flipped = bytearray(good)
    for i in range(17, len(good), 37):
        flipped[i] ^= 0xFF
    return {"empty": b"", "truncated": good[: len(good) // 2], "garbage": b"\x00\x01 not an archive " * 20,
            "flipped": bytes(flipped)}


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "flipped"])
def test_corrupt_directions_and_grid_cache_are_one_line_errors(tmp_path, damage):
    net, x, y = _mlp()
    params = select_params(net, "all")
    dirs = [filter_normalized_direction(params, seed=0)]
    path = tmp_path / "dirs.npz"
    save_directions(path, dirs)
    path.write_bytes(_corrupt_npz_variants(path.read_bytes())[damage])
    with pytest.raises(UserError, match=r"dirs.npz .*fresh=True") as err:
        load_directions(path, params, 1)
    assert "\n" not in str(err.value)
    cache = tmp_path / "grid.npz"
    landscape(net, (x, y), params, dirs, [[-0.5, 0.0, 0.5]], cache_path=cache, max_points=1)
    cache.write_bytes(_corrupt_npz_variants(cache.read_bytes())[damage])
    with pytest.raises(UserError, match=r"grid.npz has unreadable .*fresh=True"):
        landscape(net, (x, y), params, dirs, [[-0.5, 0.0, 0.5]], cache_path=cache)
    redone = landscape(net, (x, y), params, dirs, [[-0.5, 0.0, 0.5]], cache_path=cache, on_mismatch="recompute")
    assert redone["complete"]


def test_interpolation_endpoints():
    net, x, y = _mlp(0)
    net1, _, _ = _mlp(1)
    state0 = _snapshot(net)
    state1 = _snapshot(net1)
    res = interpolation(net, (x, y), state0, state1, [0.0, 0.5, 1.0])
    assert res["loss"][0] == pytest.approx(loss_and_accuracy(net, [(x, y)])[0], rel=1e-12)
    assert res["loss"][2] == pytest.approx(loss_and_accuracy(net1, [(x, y)])[0], rel=1e-12)
    _assert_same_weights(net, state0)
    with pytest.raises(UserError, match="same architecture"):
        interpolation(net, (x, y), state0, {"0.weight": torch.zeros(1)}, [0.0])


def test_interpolation_with_the_live_state_dict_as_an_endpoint():
    """float32, as in the CLI: ``state1`` is the model's own state dict, whose tensors are the live weights."""
    net, x, y = _mlp(0)
    net1, _, _ = _mlp(1)
    net, net1, x = net.float(), net1.float(), x.float()
    state0 = _snapshot(net1)
    own = loss_and_accuracy(net, [(x, y)])[0]
    res = interpolation(net, (x, y), state0, net.state_dict(), [0.0, 0.3, 1.0])
    mixed, _, _ = _mlp(2)
    mixed.float().load_state_dict({k: 0.7 * v + 0.3 * net.state_dict()[k] for k, v in state0.items()})
    expected = [loss_and_accuracy(net1, [(x, y)])[0], loss_and_accuracy(mixed, [(x, y)])[0], own]
    np.testing.assert_allclose(res["loss"], expected, rtol=1e-5)


def test_parse_range():
    assert parse_range("-1:1:3") == [-1.0, 0.0, 1.0]
    assert parse_range("0,0.5") == [0.0, 0.5]
    with pytest.raises(UserError, match="START:STOP:NUM"):
        parse_range("a:b")
