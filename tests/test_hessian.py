"""Hessian estimators against a dense Hessian (torch.autograd.functional.hessian) and against PyHessian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from grace_bench.errors import UserError
from grace_bench.geometry.hessian import (
    build_operator,
    hessian_report,
    hutch_plus_plus,
    hutchinson,
    lanczos_eigenvalues,
    layer_key,
    power_iteration,
    rademacher,
    run_lanczos,
    spectral_density,
)
from grace_bench.geometry.lanczos import error_estimates
from grace_bench.geometry.losses import math_sdpa, select_params


def _mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)
    x = torch.randn(64, 8, dtype=dtype)
    y = torch.randint(0, 4, (64,))
    return net, x, y


def _dense_hessian(model, params, x, y, loss_fn=F.cross_entropy):
    names = [n for n, _ in params]
    shapes = [p.shape for _, p in params]
    numels = [p.numel() for _, p in params]
    flat = torch.cat([p.detach().reshape(-1) for _, p in params])

    def f(vec):
        ps = {n: c.view(s) for n, c, s in zip(names, vec.split(numels), shapes)}
        return loss_fn(functional_call(model, ps, (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


@pytest.fixture(scope="module")
def mlp_case():
    net, x, y = _mlp()
    params = select_params(net, "all")
    dense = _dense_hessian(net, params, x, y)
    return net, x, y, params, dense


def test_lanczos_matches_dense_top5(mlp_case):
    net, x, y, params, dense = mlp_case
    evals = torch.linalg.eigvalsh(dense).flip(0)
    op = build_operator(net, (x, y), params)
    res = lanczos_eigenvalues(op, 5, tol=1e-6, seed=3)
    assert res["converged"] and res["num_hvp"] == res["iterations"] < op.dim
    np.testing.assert_allclose(res["eigenvalues"], evals[:5].numpy(), rtol=1e-8)
    assert res["seed"] == 3
    smallest = lanczos_eigenvalues(op, 1, tol=1e-6, which="SA")["eigenvalues"][0]
    assert smallest == pytest.approx(float(evals[-1]), rel=1e-6)


def test_lanczos_criteria_and_starts(mlp_case):
    net, x, y, params, dense = mlp_case
    evals = torch.linalg.eigvalsh(dense).flip(0).numpy()
    op = build_operator(net, (x, y), params)
    runs = {}
    for criterion in ("estimate", "residual"):
        for start in ("gradient", "random", "rademacher"):
            res = lanczos_eigenvalues(op, 3, tol=1e-4, criterion=criterion, start=start, seed=1)
            assert res["converged"] and res["criterion"] == criterion
            assert np.all(np.asarray(res["error_estimates"]) <= 1e-4)
            err = np.abs(np.asarray(res["eigenvalues"]) - evals[:3]) / np.abs(evals[:3])
            # lambda_1, lambda_2 are well separated: the estimate holds
            assert np.all(err[:2] <= 1e-4)
            # lambda_3 is 0.8% from lambda_4; before the run resolves the pair the gap to the other Ritz
            # values overstates the true gap, so only the residual criterion guarantees tol here
            assert err[2] <= (1e-4 if criterion == "residual" else 1e-3)
            runs[criterion, start] = res["num_hvp"]
    for start in ("gradient", "random", "rademacher"):
        assert runs["estimate", start] <= runs["residual", start]
    assert lanczos_eigenvalues(op, 1, start="gradient")["start"] == "gradient+gaussian"
    given = lanczos_eigenvalues(op, 1, tol=1e-6, start=torch.ones(op.dim, dtype=x.dtype))
    assert given["start"] == "given" and given["eigenvalues"][0] == pytest.approx(evals[0], rel=1e-6)
    with pytest.raises(UserError, match="start"):
        lanczos_eigenvalues(op, 1, start="sideways")
    with pytest.raises(UserError, match="criterion"):
        lanczos_eigenvalues(op, 1, criterion="vibes")


def test_error_estimate_uses_the_gap():
    theta = np.array([0.0, 1.0, 10.0])
    resid = np.array([0.3])
    idx = np.array([2])
    assert error_estimates(theta, resid, idx, "residual")[0] == pytest.approx(0.3)
    assert error_estimates(theta, resid, idx, "estimate")[0] == pytest.approx(0.09 / 9)
    # a residual larger than the gap: the plain residual bound is the smaller one
    assert error_estimates(theta, np.array([20.0]), idx, "estimate")[0] == pytest.approx(20.0)
    assert error_estimates(np.array([5.0]), resid, np.array([0]), "estimate")[0] == pytest.approx(0.3)


def test_operator_gradient_matches_autograd(mlp_case):
    net, x, y, params, _ = mlp_case
    loss = F.cross_entropy(net(x), y)
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [p for _, p in params])])
    parts = [(x[:40], y[:40]), (x[40:], y[40:])]
    for op in (build_operator(net, (x, y), params), build_operator(net, parts, params, cache_graph=False)):
        torch.testing.assert_close(op.gradient(), want)
        assert op.num_hvp == 0


def test_deflated_hutchinson_matches_dense_with_smaller_error(mlp_case):
    net, x, y, params, dense = mlp_case
    op = build_operator(net, (x, y), params)
    _, run = run_lanczos(op, 3, tol=1e-6, start="rademacher", min_iter=20)
    assert run.m >= 20
    plain = hutchinson(op, 200, seed=5)
    defl = hutchinson(op, 200, seed=5, deflate=run)
    assert defl["method"].endswith("deflated") and defl["deflation"]["rank"] == run.m
    assert defl["num_hvp"] == 200
    true = float(dense.trace())
    assert abs(defl["trace"] - true) < 4 * defl["trace_se"]
    assert defl["trace_se"] < 0.7 * plain["trace_se"]
    assert np.mean(defl["samples"]) == pytest.approx(defl["trace"])
    assert abs(defl["frobenius_norm"] - float(dense.norm())) < 4 * defl["frobenius_norm_se"]
    offsets = op.slices()
    for layer in ("0", "2"):
        idx = torch.cat([torch.arange(sl.start, sl.stop) for n, sl in offsets.items() if layer_key(n) == layer])
        got = defl["layers"][layer]
        assert abs(got["trace"] - float(dense.diagonal()[idx].sum())) < 4 * got["trace_se"]


def test_deflation_by_a_full_basis_is_exact(mlp_case):
    net, x, y, params, dense = mlp_case
    op = build_operator(net, (x, y), params)
    _, run = run_lanczos(op, 1, tol=1e-12, start="rademacher", min_iter=op.dim)
    assert run.m == op.dim
    res = hutchinson(op, 3, seed=0, deflate=run)
    assert res["trace"] == pytest.approx(float(dense.trace()), rel=1e-8)
    assert res["trace_se"] < 1e-8 * abs(res["trace"])
    assert res["frobenius_norm"] == pytest.approx(float(dense.norm()), rel=1e-8)
    offsets = op.slices()
    for layer in ("0", "2"):
        idx = torch.cat([torch.arange(sl.start, sl.stop) for n, sl in offsets.items() if layer_key(n) == layer])
        assert res["layers"][layer]["trace"] == pytest.approx(float(dense.diagonal()[idx].sum()), rel=1e-8)


def test_shared_lanczos_run_is_the_first_slq_run(mlp_case):
    net, x, y, params, _ = mlp_case
    op = build_operator(net, (x, y), params)
    gen = torch.Generator().manual_seed(4)
    v0 = rademacher(1, op.dim, generator=gen, device="cpu", dtype=x.dtype)[0]
    _, run = run_lanczos(op, 2, start=v0.clone(), min_iter=25)
    shared, shared_arrays = spectral_density(op, num_runs=1, num_iter=12, shared=run)
    assert shared["num_hvp"] == 0 and shared["shared_runs"] == 1
    fresh = build_operator(net, (x, y), params)
    from grace_bench.geometry.hessian import _lanczos_quadrature

    nodes, weights = _lanczos_quadrature(fresh, v0.clone(), 12)
    assert fresh.num_hvp == 12
    np.testing.assert_allclose(shared_arrays["nodes"][0], nodes, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(shared_arrays["weights"][0], weights, rtol=1e-5, atol=1e-9)


def test_lanczos_eigenvectors_are_eigenvectors(mlp_case):
    net, x, y, params, dense = mlp_case
    op = build_operator(net, (x, y), params)
    # eigenvector error scales with r / gap (eigenvalue error with r^2 / gap): ask for small residuals
    res = lanczos_eigenvalues(op, 2, tol=1e-8, criterion="residual", return_vectors=True)
    assert res["criterion"] == "residual"
    for lam, vec in zip(res["eigenvalues"], res["eigenvectors"]):
        assert torch.linalg.norm(dense @ vec - lam * vec) < 1e-6 * abs(lam)


def test_power_iteration_matches_dense(mlp_case):
    net, x, y, params, dense = mlp_case
    evals = torch.linalg.eigvalsh(dense)
    top_mag = sorted(evals.tolist(), key=abs, reverse=True)
    res = power_iteration(build_operator(net, (x, y), params), 2, tol=1e-7, max_iter=2000)
    np.testing.assert_allclose(res["eigenvalues"], top_mag[:2], rtol=1e-3)
    assert res["num_hvp"] == sum(res["iterations"])


def test_hutchinson_trace_layers_and_frobenius(mlp_case):
    net, x, y, params, dense = mlp_case
    op = build_operator(net, (x, y), params)
    res = hutchinson(op, 300, seed=5, granularity="block")
    assert abs(res["trace"] - float(dense.trace())) < 4 * res["trace_se"]
    assert res["trace_se"] < 0.1 * abs(float(dense.trace()))
    fro = float(dense.norm())
    assert abs(res["frobenius_norm"] - fro) < 4 * res["frobenius_norm_se"]
    assert res["frobenius_over_sqrt_dim"] == pytest.approx(res["frobenius_norm"] / math.sqrt(op.dim))
    # per-layer kappa_l = tr(H_ll) / d_l against the dense diagonal blocks
    offsets = op.slices()
    for layer in ("0", "2"):
        idx = torch.cat([torch.arange(sl.start, sl.stop) for n, sl in offsets.items() if layer_key(n) == layer])
        block_trace = float(dense.diagonal()[idx].sum())
        got = res["layers"][layer]
        assert got["dim"] == idx.numel()
        assert abs(got["trace"] - block_trace) < 4 * got["trace_se"]
        assert got["kappa"] == pytest.approx(got["trace"] / got["dim"])
    assert res["seed"] == 5 and res["num_hvp"] == 300


def test_hutch_plus_plus(mlp_case):
    net, x, y, params, dense = mlp_case
    op = build_operator(net, (x, y), params)
    true = float(dense.trace())
    res = hutch_plus_plus(op, 90, seed=1)
    assert res["num_hvp"] == 90 and res["sketch_size"] == 30
    assert abs(res["trace"] - true) < 4 * res["trace_se"]
    # a sketch spanning the whole space leaves no residual: the trace is exact
    full = hutch_plus_plus(op, 3 * op.dim, seed=1)
    assert full["trace"] == pytest.approx(true, rel=1e-9)
    assert abs(full["residual_part"]) < 1e-9


def test_slq_density(mlp_case):
    net, x, y, params, dense = mlp_case
    evals = torch.linalg.eigvalsh(dense)
    op = build_operator(net, (x, y), params)
    summary, arrays = spectral_density(op, num_runs=3, num_iter=60, seed=2, grid_points=800)
    assert summary["lambda_max_ritz"] == pytest.approx(float(evals[-1]), rel=1e-6)
    assert summary["lambda_min_ritz"] == pytest.approx(float(evals[0]), rel=1e-6)
    grid, density = arrays["grid"], arrays["density"]
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    weights = arrays["weights"]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-8)
    # SLQ's trace is a Hutchinson estimate over 3 vectors: loose, but must be in range
    assert abs(summary["trace_slq"] - float(dense.trace())) < 0.5 * abs(float(dense.trace()))


def test_multi_batch_operator_equals_single_batch(mlp_case):
    net, x, y, params, _ = mlp_case
    v = torch.randn(sum(p.numel() for _, p in params), dtype=x.dtype)
    whole = build_operator(net, (x, y), params).matvec(v)
    parts = [(x[:40], y[:40]), (x[40:], y[40:])]
    streamed = build_operator(net, parts, params, cache_graph=False).matvec(v)
    cached = build_operator(net, parts, params, cache_graph=True).matvec(v)
    torch.testing.assert_close(streamed, whole)
    torch.testing.assert_close(cached, whole)


@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
def test_pyhessian_reference_top_eigenvalue_and_trace():
    pyhessian = pytest.importorskip("pyhessian")
    net, x, y = _mlp(dtype=torch.float32, seed=1)
    params = select_params(net, "all")
    ours = lanczos_eigenvalues(build_operator(net, (x, y), params), 1, tol=1e-3)
    ours_trace = hutchinson(build_operator(net, (x, y), params), 200, seed=0, granularity=None)
    torch.manual_seed(0)
    ref = pyhessian.hessian(net, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    ref_top, _ = ref.eigenvalues(top_n=1, maxIter=200, tol=1e-4)
    samples = np.asarray(ref.trace(maxIter=200, tol=-math.inf))  # PyHessian's own stop test misfires on tr < 0
    ref_trace, ref_se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
    assert ours["eigenvalues"][0] == pytest.approx(ref_top[0], rel=5e-3)
    assert abs(ours_trace["trace"] - ref_trace) < 4 * math.hypot(ours_trace["trace_se"], ref_se)


def _ln1_group(classifier):
    return select_params(classifier, "visual.transformer.resblocks.0.ln_1")


def test_tiny_clip_hvp_matches_dense_under_math_sdpa(tiny_classifier):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    y = torch.randint(0, 10, (6,))
    params = _ln1_group(tiny_classifier)
    assert [n for n, _ in params] == ["model.visual.transformer.resblocks.0.ln_1.weight",
                                      "model.visual.transformer.resblocks.0.ln_1.bias"]
    with math_sdpa():
        dense = _dense_hessian(tiny_classifier, params, x, y)
    op = build_operator(tiny_classifier, (x, y), params)
    v = torch.randn(op.dim)
    torch.testing.assert_close(op.matvec(v), dense @ v, rtol=1e-3, atol=1e-5)
    top = lanczos_eigenvalues(op, 1, tol=1e-5)["eigenvalues"][0]
    assert top == pytest.approx(float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-3)
    flags = {n: p.requires_grad for n, p in tiny_classifier.named_parameters()}
    assert all(flags.values())  # grad flags restored after the HVPs


def test_report_on_tiny_clip_vision_group(tiny_classifier):
    torch.manual_seed(0)
    batch = (torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    op = build_operator(tiny_classifier, batch, select_params(tiny_classifier, "vision"))
    report, arrays = hessian_report(op, top_k=2, lanczos_iter=30, trace_samples=4, slq_runs=1, slq_iter=8,
                                    seed=7, progress=False)
    assert report["seed"] == 7 and report["top_eigenvalues"]["k"] == 2
    layers = report["trace"]["layers"]
    assert "model.visual.transformer.resblocks.1" in layers and "model.visual.conv1" in layers
    assert sum(v["dim"] for v in layers.values()) == op.dim
    assert arrays["density_density"].shape == (1000,)
    assert report["num_hvp_total"] == op.num_hvp
    # one Lanczos run serves top-k, the only SLQ run and the deflation: no HVP beyond it and the samples
    top = report["top_eigenvalues"]
    assert top["iterations"] >= 8 and top["start"] == "rademacher"
    assert report["density"]["num_hvp"] == 0 and report["density"]["shared_runs"] == 1
    assert report["trace"]["deflation"]["rank"] == top["iterations"]
    assert op.num_hvp == top["num_hvp"] + 4
    two, _ = hessian_report(build_operator(tiny_classifier, batch, select_params(tiny_classifier, "vision")),
                            top_k=2, lanczos_iter=30, trace_samples=0, slq_runs=2, slq_iter=8, seed=7,
                            progress=False)
    assert two["density"]["num_hvp"] == 8 and two["num_hvp_total"] == two["top_eigenvalues"]["num_hvp"] + 8


def test_parameter_groups(tiny_classifier):
    vision = select_params(tiny_classifier, "vision")
    assert vision and all(n.startswith("model.visual.") for n, _ in vision)
    assert select_params(tiny_classifier, "visual.proj")[0][0] == "model.visual.proj"
    with pytest.raises(UserError, match="lora"):
        select_params(tiny_classifier, "lora")
    with pytest.raises(UserError, match="no parameter"):
        select_params(tiny_classifier, "visual.nonexistent")
    lora = nn.Module()
    lora.register_parameter("lora_A", nn.Parameter(torch.zeros(2, 3)))
    lora.register_parameter("base", nn.Parameter(torch.zeros(3)))
    assert [n for n, _ in select_params(lora, "lora")] == ["lora_A"]


def test_lora_group_hvp_matches_dense(tiny_classifier):
    from grace_bench.models.lora import LoRAConfig, apply_lora

    apply_lora(tiny_classifier.model, LoRAConfig(rank=2, targets=("attn_out",)))
    params = select_params(tiny_classifier, "lora")
    assert params and all("lora_" in n for n, _ in params)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, p in params:
            p.normal_(0, 0.1)  # move off lora_B = 0 so every factor has curvature
    x = torch.rand(4, 3, 16, 16)
    y = torch.randint(0, 10, (4,))
    with math_sdpa():
        dense = _dense_hessian(tiny_classifier, params, x, y)
    op = build_operator(tiny_classifier, (x, y), params)
    v = torch.randn(op.dim)
    torch.testing.assert_close(op.matvec(v), dense @ v, rtol=1e-3, atol=1e-5)
