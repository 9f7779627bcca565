"""Curvature operators apart from estimators: every estimator on explicit matrices with known spectra,
layer blocks, the data-parallel reduction, and the shared diagonal code."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grace_bench.errors import UserError
from grace_bench.geometry.estimators import (
    hutch_plus_plus,
    hutchinson,
    hutchinson_diagonal,
    lanczos_eigenvalues,
    power_iteration,
    run_lanczos,
    spectral_density,
)
from grace_bench.geometry.losses import select_params
from grace_bench.geometry.operators import (
    BlockOperator,
    CurvatureOperator,
    DataParallelOperator,
    HessianOperator,
    MatrixOperator,
    layer_blocks,
)
from grace_bench.geometry.reports import hessian_report


def _matrix(dim=24, seed=0, spectrum=None):
    """A dense symmetric matrix Q diag(spectrum) Q^T with a known spectrum (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lam = torch.as_tensor(spectrum, dtype=torch.float64) if spectrum is not None else \
        torch.linspace(-1.0, 10.0, dim, dtype=torch.float64)
    return (q * lam) @ q.T, lam.sort(descending=True).values


def test_matrix_operator_satisfies_the_protocol_and_counts():
    a, _ = _matrix(6)
    op = MatrixOperator(a)
    assert isinstance(op, CurvatureOperator)
    op.matvec(torch.ones(6, dtype=torch.float64))
    assert op.num_hvp == 1
    with pytest.raises(ValueError, match="symmetric"):
        MatrixOperator(torch.triu(torch.ones(3, 3)))


def test_lanczos_and_power_find_the_known_top_eigenvalues():
    a, lam = _matrix(30, spectrum=[20.0, 15.0, 12.0] + [float(x) for x in torch.linspace(-2, 5, 27)])
    res = lanczos_eigenvalues(MatrixOperator(a), 3, tol=1e-8, start="random", max_iter=30)
    torch.testing.assert_close(torch.tensor(res["eigenvalues"], dtype=torch.float64), lam[:3], rtol=1e-7, atol=0)
    pw = power_iteration(MatrixOperator(a), 1, tol=1e-10, max_iter=500)
    assert pw["eigenvalues"][0] == pytest.approx(20.0, rel=1e-4)
    with pytest.raises(ValueError, match="gradient"):  # a plain matrix has no loss gradient to start from
        lanczos_eigenvalues(MatrixOperator(a), 1, start="gradient")
    with pytest.raises(UserError, match="^k must be at least 1"):
        run_lanczos(MatrixOperator(a), 0)


def test_trace_estimators_are_exact_where_the_sketch_spans_the_space():
    a, lam = _matrix(20, seed=1)
    trace = float(lam.sum())
    op = MatrixOperator(a)
    hpp = hutch_plus_plus(op, 3 * 20, seed=0)  # sketch of size dim: Q spans everything, nothing is sampled
    assert hpp["trace"] == pytest.approx(trace, rel=1e-10)
    _, run = run_lanczos(op, 1, max_iter=20, min_iter=20, start="rademacher")
    deflated = hutchinson(op, 2, deflate=run, granularity=None)  # full Krylov basis: the trace is exact
    assert deflated["trace"] == pytest.approx(trace, rel=1e-8)
    plain = hutchinson(MatrixOperator(a), 400, seed=3, granularity=None)
    assert abs(plain["trace"] - trace) < 4 * plain["trace_se"]
    assert plain["num_hvp"] == 400


def test_slq_with_a_full_run_puts_its_nodes_on_the_eigenvalues():
    a, lam = _matrix(12, seed=2, spectrum=[float(i) for i in range(1, 13)])
    summary, arrays = spectral_density(MatrixOperator(a), num_runs=2, num_iter=12, seed=0)
    for row in arrays["nodes"]:
        torch.testing.assert_close(torch.as_tensor(sorted(row)), torch.arange(1.0, 13.0, dtype=torch.float64),
                                   rtol=0, atol=1e-8)
    grid, dens = arrays["grid"], arrays["density"]
    assert float(((grid[1:] - grid[:-1]) * dens[:-1]).sum()) == pytest.approx(1.0, abs=1e-2)
    assert summary["num_hvp"] == 24


def test_hutchinson_diagonal_is_exact_on_a_diagonal_matrix_and_unbiased_otherwise():
    d = torch.arange(1.0, 9.0, dtype=torch.float64)
    res = hutchinson_diagonal(MatrixOperator(torch.diag(d), {"w": slice(0, 4), "b": slice(4, 8)}), 3)
    torch.testing.assert_close(res["diagonal"].flat(), d)
    assert res["layers"] == {"w": pytest.approx(2.5), "b": pytest.approx(6.5)}
    a, _ = _matrix(10, seed=4)
    est = hutchinson_diagonal(MatrixOperator(a), 2000, seed=1)
    z = (est["diagonal"].flat() - a.diag()) / est["diagonal_se"].clamp_min(1e-12)
    assert float(z.abs().max()) < 5


def test_layer_blocks_are_the_diagonal_blocks():
    a, _ = _matrix(10, seed=5)
    op = MatrixOperator(a, {"l0.weight": slice(0, 3), "l0.bias": slice(3, 5), "l1.weight": slice(5, 10)})
    blocks = layer_blocks(op, "module")
    assert list(blocks) == ["l0", "l1"]
    sub = a[:5, :5]
    res = lanczos_eigenvalues(blocks["l0"], 1, tol=1e-10, start="random", max_iter=5)
    assert res["eigenvalues"][0] == pytest.approx(float(torch.linalg.eigvalsh(sub)[-1]), rel=1e-8)
    v = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(BlockOperator(op, {"x": slice(0, 5)}).matvec(v), sub @ v)
    assert blocks["l0"].num_hvp >= 1 and op.num_hvp >= blocks["l0"].num_hvp


def _mlp_case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return net, x, y


def test_hessian_restrict_equals_the_generic_block():
    net, x, y = _mlp_case()
    op = HessianOperator(net, (x, y), select_params(net, "all"))
    names = ["2.weight", "2.bias"]
    small = op.restrict(names)
    block = BlockOperator(op, {n: op.slices()[n] for n in names})
    v = torch.randn(small.dim, dtype=torch.float64)
    torch.testing.assert_close(small.matvec(v), block.matvec(v))


class _ThreadAllReduce:
    """An in-process SUM all-reduce between threads (one per rank), standing in for a process group."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.slots: dict[int, torch.Tensor] = {}

    def for_rank(self, rank: int):
        def reduce(t: torch.Tensor) -> None:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.slots[r] for r in sorted(self.slots))
            self.barrier.wait()
            t.copy_(total)

        return reduce


def test_data_parallel_operator_all_reduces_to_the_full_data_hessian():
    net, x, y = _mlp_case()
    params = select_params(net, "all")
    full = HessianOperator(net, (x, y), params)
    v = torch.randn(full.dim, dtype=torch.float64)
    expected = full.matvec(v)
    shards = [(x[:8], y[:8]), (x[8:], y[8:])]  # unequal shards: the sample weights matter
    comm = _ThreadAllReduce(2)
    out: dict[int, tuple] = {}

    def rank(r: int) -> None:
        local = HessianOperator(net, shards[r], params)
        dp = DataParallelOperator(local, all_reduce=comm.for_rank(r))
        out[r] = (dp.num_samples, dp.matvec(v), dp.gradient())

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in range(2):
        assert out[r][0] == 20
        torch.testing.assert_close(out[r][1], expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[r][2], full.gradient(), rtol=1e-10, atol=1e-12)


def test_report_runs_on_any_operator():
    a, lam = _matrix(16, seed=6)
    report, arrays = hessian_report(MatrixOperator(a), top_k=2, lanczos_iter=16, tol=1e-8, trace_samples=4,
                                    slq_runs=1, slq_iter=16, progress=False)
    assert report["top_eigenvalues"]["eigenvalues"][0] == pytest.approx(float(lam[0]), rel=1e-7)
    assert report["trace"]["trace"] == pytest.approx(float(lam.sum()), rel=1e-8)  # deflated by a full basis
    assert arrays["density_grid"].shape == (1000,)


def test_hutchinson_layers_are_block_means_of_the_hutchinson_diagonal():
    net, x, y = _mlp_case()
    op = HessianOperator(net, (x, y), select_params(net, "all"))
    layers = hutchinson(op, 6, seed=4, granularity="block")["layers"]
    diag = hutchinson_diagonal(op, 6, seed=4)
    for key, value in diag["layers"].items():
        assert layers[key]["kappa"] == pytest.approx(value, rel=1e-9)


def test_grace_proxy_is_the_block_mean_of_the_gauss_newton_diagonal():
    from grace_bench.finetune.grace.curvature import measure_layer_curvature
    from grace_bench.geometry.diagonal import gauss_newton_diagonal

    net, x, y = _mlp_case()
    layers = [[net[0].weight, net[0].bias], [net[2].weight, net[2].bias]]
    proxy = measure_layer_curvature(net, x, y, layers)
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), [p for layer in layers for p in layer])
    flat = gauss_newton_diagonal(grads, x.shape[0]).flat()
    expected = torch.stack([flat[:36].mean(), flat[36:].mean()]).float()
    torch.testing.assert_close(proxy, expected, rtol=1e-6, atol=0)
