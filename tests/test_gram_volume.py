"""Gram-volume loss: known values, closed form, agreement with an explicit determinant, stable gradients."""

from __future__ import annotations

import pytest
import torch

from grace_bench.finetune.grace.gram_volume import gram_determinants, gram_volume_loss


def _random_views(n=5, d=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=dtype) for _ in range(3)]


def test_identical_vectors_give_zero_volume():
    x = torch.randn(4, 16, dtype=torch.float64)
    det = gram_determinants(x, 3.0 * x, x, eps=0.0)
    assert torch.allclose(det, torch.zeros(4, dtype=torch.float64), atol=1e-12)
    loss = gram_volume_loss(x, x, x, eps=0.0, tiny=0.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # With the default eps the volume is tiny but not zero: det(11^T + eps I) = eps^2 (3 + eps).
    assert gram_volume_loss(x, x, x).item() == pytest.approx((1e-8 * 3.0001 + 1e-12) ** 0.5, rel=1e-4)


def test_orthonormal_vectors_give_unit_volume():
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    u, v, w = q[:, 0:1].T, q[:, 1:2].T, q[:, 2:3].T
    assert gram_determinants(u, v, w, eps=0.0).item() == pytest.approx(1.0, abs=1e-12)
    assert gram_volume_loss(u, 2 * v, 5 * w, eps=0.0, tiny=0.0).item() == pytest.approx(1.0, abs=1e-12)


def test_matches_closed_form_in_cosines():
    f1, f2, f3 = _random_views()
    n = [x / x.norm(dim=-1, keepdim=True) for x in (f1, f2, f3)]
    a, b, c = (n[0] * n[1]).sum(-1), (n[0] * n[2]).sum(-1), (n[1] * n[2]).sum(-1)
    expected = 1 + 2 * a * b * c - a**2 - b**2 - c**2
    assert torch.allclose(gram_determinants(f1, f2, f3, eps=0.0), expected, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-4, 0.3])
def test_matches_explicit_linalg_det(eps):
    f1, f2, f3 = _random_views(seed=1)
    stacked = torch.stack([x / x.norm(dim=-1, keepdim=True) for x in (f1, f2, f3)], dim=1)  # (n, 3, d)
    gram = stacked @ stacked.transpose(1, 2) + eps * torch.eye(3, dtype=torch.float64)
    reference = torch.linalg.det(gram)
    assert torch.allclose(gram_determinants(f1, f2, f3, eps=eps), reference, atol=1e-12)
    expected_loss = torch.sqrt(reference.abs() + 1e-12).mean()
    assert gram_volume_loss(f1, f2, f3, eps=eps, tiny=1e-12).item() == pytest.approx(expected_loss.item(), rel=1e-10)


@pytest.mark.parametrize("eps", [0.0, 1e-4, 0.3])
def test_two_views_match_explicit_linalg_det(eps):
    f1, f2, _ = _random_views(seed=4)
    stacked = torch.stack([x / x.norm(dim=-1, keepdim=True) for x in (f1, f2)], dim=1)
    reference = torch.linalg.det(stacked @ stacked.transpose(1, 2) + eps * torch.eye(2, dtype=torch.float64))
    assert torch.allclose(gram_determinants(f1, f2, None, eps=eps), reference, atol=1e-12)
    assert gram_volume_loss(f1, 4 * f1, None, eps=0.0, tiny=0.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_gradients_finite_when_collinear(eps):
    base = torch.randn(3, 12)
    views = [(s * base).clone().requires_grad_(True) for s in (1.0, 2.0, 0.5)]
    gram_volume_loss(*views, eps=eps).backward()
    for v in views:
        assert v.grad is not None and torch.isfinite(v.grad).all()


def test_gradcheck_double():
    views = [x.requires_grad_(True) for x in _random_views(n=3, d=5, seed=2)]
    assert torch.autograd.gradcheck(lambda a, b, c: gram_volume_loss(a, b, c), views, eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda a, b, c: gram_determinants(a, b, c, eps=0.1), views, eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda a, b: gram_volume_loss(a, b, None), views[:2], eps=1e-6, atol=1e-5)


def test_loss_decreases_when_views_align():
    f1, f2, f3 = _random_views(seed=3)
    spread = gram_volume_loss(f1, f2, f3).item()
    closer = gram_volume_loss(f1, f1 + 0.1 * f2, f1 + 0.1 * f3).item()
    assert closer < spread


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        gram_volume_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="batch, dim"):
        gram_volume_loss(torch.randn(4), torch.randn(4), torch.randn(4))
