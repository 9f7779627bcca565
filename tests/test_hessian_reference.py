"""Top eigenvalue and trace of a tiny MLP's Hessian: dense vs ours vs PyHessian vs curvlinops, all together.

The MLP has 212 parameters, so the dense Hessian (``torch.autograd.functional.hessian``) is exact and cheap.
Everything runs in float64 except PyHessian (float32 copy: its random vectors are float32).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

# --- adapter: our Hessian API (the only lines to re-point after the geometry refactor) ---
from grace_bench.geometry.hessian import build_operator, hutch_plus_plus, hutchinson, lanczos_eigenvalues
from grace_bench.geometry.losses import select_params

# -----------------------------------------------------------------------------------------

pyhessian = pytest.importorskip("pyhessian")
curvlinops = pytest.importorskip("curvlinops")

MATVECS = 99  # Hutch++ budget shared by ours and curvlinops (divisible by 3, below the dimension)


def _net_and_data(dtype: torch.dtype = torch.float64):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)
    x = torch.randn(64, 8, dtype=dtype)
    y = torch.randint(0, 4, (64,))
    return net, x, y


def _dense(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    numels = [p.numel() for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(vec: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, vec.split(numels), shapes)}
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def _curvlinops_operator(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return curvlinops.HessianLinearOperator(net, nn.CrossEntropyLoss(), list(net.parameters()), [(x, y)])


def _pyhessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor):
    net32 = _net_and_data(torch.float32)[0]
    net32.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    torch.manual_seed(0)
    return pyhessian.hessian(net32, nn.CrossEntropyLoss(), data=(x.float(), y), cuda=False)


@pytest.fixture(scope="module")
def case():
    net, x, y = _net_and_data()
    dense = _dense(net, x, y)
    evals = torch.linalg.eigvalsh(dense)
    assert sum(p.numel() for p in net.parameters()) == 212
    assert evals[-1] > abs(evals[0])  # the largest eigenvalue is also the largest in magnitude (PyHessian's)
    return net, x, y, dense, evals


def test_operators_equal_the_dense_hessian(case):
    net, x, y, dense, _ = case
    ours = build_operator(net, (x, y), select_params(net, "all"))
    theirs = _curvlinops_operator(net, x, y)
    eye = torch.eye(dense.shape[0], dtype=dense.dtype)
    ours_matrix = torch.stack([ours.matvec(e) for e in eye], dim=1)
    torch.testing.assert_close(ours_matrix, dense, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(theirs @ eye, dense, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
def test_top_eigenvalue_agrees_four_ways(case):
    from scipy.sparse.linalg import eigsh

    net, x, y, _, evals = case
    exact = float(evals[-1])
    ours = lanczos_eigenvalues(build_operator(net, (x, y), select_params(net, "all")), 1, tol=1e-10, seed=0)
    theirs = eigsh(_curvlinops_operator(net, x, y).to_scipy(), k=1, which="LA", tol=1e-10,
                   v0=np.ones(evals.shape[0]), return_eigenvectors=False)
    power, _ = _pyhessian(net, x, y).eigenvalues(maxIter=1000, tol=1e-7, top_n=1)
    assert ours["converged"] and ours["eigenvalues"][0] == pytest.approx(exact, rel=1e-8)
    assert float(theirs[0]) == pytest.approx(exact, rel=1e-8)
    assert power[0] == pytest.approx(exact, rel=1e-4)  # float32 HVPs and a relative-change stop test


@pytest.mark.filterwarnings(r"ignore:Using backward\(\) with create_graph=True")
def test_trace_agrees_four_ways(case):
    net, x, y, dense, _ = case
    exact = float(dense.trace())
    op = build_operator(net, (x, y), select_params(net, "all"))
    plain = hutchinson(op, 200, seed=0, granularity=None)
    ours = [hutch_plus_plus(op, MATVECS, seed=s) for s in range(5)]
    theirs_op = _curvlinops_operator(net, x, y)
    theirs = []
    for seed in range(5):
        torch.manual_seed(seed)
        theirs.append(float(curvlinops.hutchpp_trace(theirs_op, MATVECS)))
    samples = np.asarray(_pyhessian(net, x, y).trace(maxIter=200, tol=-math.inf))
    py_mean, py_se = float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(samples.size))

    assert abs(plain["trace"] - exact) < 4 * plain["trace_se"]
    assert abs(py_mean - exact) < 4 * py_se
    for est in ours:
        assert est["num_hvp"] == MATVECS and abs(est["trace"] - exact) < 4 * est["trace_se"]
    # Hutch++ at equal matvecs: our per-run standard error describes both estimators' scatter
    se = float(np.mean([est["trace_se"] for est in ours]))
    assert all(abs(t - exact) < 4 * se for t in theirs)
    ours_mean = float(np.mean([est["trace"] for est in ours]))
    assert abs(ours_mean - float(np.mean(theirs))) < 4 * se * math.sqrt(2 / len(theirs))
