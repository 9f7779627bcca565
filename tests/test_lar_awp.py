"""LAR-AWP: exact restore, projection, rank masks, ascent direction, AWP-style gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.finetune.grace.lar_awp import AWPSettings, LowRankAWP, lowrank_fro_norm
from grace_bench.models.lora import LoRAConfig, apply_lora, lora_layers, lora_parameters


@pytest.fixture
def adapted(tiny_classifier):
    """tiny-clip classifier with rank-4 LoRA on the vision tower, B moved off zero (a generic point)."""
    torch.manual_seed(1)
    layers = apply_lora(tiny_classifier.model, LoRAConfig(rank=4))
    with torch.no_grad():
        for p in layers.values():
            p.lora_B.normal_(0, 0.05)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 10
    return tiny_classifier, layers, x, y


def _ce(clf, x, y):
    return F.cross_entropy(clf(x), y)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_weights_bit_identical_after_exit(adapted):
    clf, layers, x, y = adapted
    before, logits_before = _snapshot(clf.model), clf(x).detach()
    awp = LowRankAWP(layers, AWPSettings(rho=0.05, steps=2))
    with awp.perturbed(lambda: _ce(clf, x, y), generator=torch.Generator().manual_seed(0)):
        assert not torch.allclose(clf(x), logits_before)  # the perturbation is really applied
    after = clf.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(clf(x), logits_before)
    assert all(p.extra_delta is None for p in layers.values())
    assert all(p.grad is None for p in clf.model.parameters())  # the ascent never writes .grad


def test_restored_even_when_the_block_raises(adapted):
    clf, layers, x, y = adapted
    logits_before = clf(x).detach()
    awp = LowRankAWP(layers)
    with pytest.raises(KeyError):
        with awp.perturbed(lambda: _ce(clf, x, y)):
            raise KeyError("boom")
    assert all(p.extra_delta is None for p in layers.values())
    assert torch.equal(clf(x), logits_before)


@pytest.mark.parametrize("steps", [1, 3])
def test_projection_onto_relative_ball(adapted, steps):
    clf, layers, x, y = adapted
    rho = 5e-3
    awp = LowRankAWP(layers, AWPSettings(rho=rho, steps=steps))
    with awp.perturbed(lambda: _ce(clf, x, y), generator=torch.Generator().manual_seed(0)):
        for name, p in layers.items():
            explicit = torch.linalg.matrix_norm(awp.delta(name))
            radius = rho * torch.linalg.matrix_norm(p.base_weight())
            assert explicit <= radius * (1 + 1e-5)
            # eta = rho: the normalised steps end on the boundary
            assert explicit >= radius * (1 - 1e-3)
            assert torch.allclose(awp.delta_norms()[name], explicit, rtol=1e-4)


def test_absolute_radius(adapted):
    clf, layers, x, y = adapted
    awp = LowRankAWP(layers, AWPSettings(rho=0.02, radius="absolute", steps=2))
    with awp.perturbed(lambda: _ce(clf, x, y)):
        norms = torch.stack([torch.linalg.matrix_norm(awp.delta(n)) for n in layers])
    assert torch.all(norms <= 0.02 * (1 + 1e-5)) and torch.all(norms >= 0.02 * (1 - 1e-3))


def test_rank_masks_and_rank_zero_layers(adapted):
    clf, layers, x, y = adapted
    names = list(layers)
    awp = LowRankAWP(layers, AWPSettings(rho=0.05, steps=3))
    ranks = {n: [0, 1, 2, 4][i % 4] for i, n in enumerate(names)}
    awp.set_ranks(ranks)
    with awp.perturbed(lambda: _ce(clf, x, y)):
        for n in names:
            if ranks[n] == 0:
                assert layers[n].extra_delta is None
                assert n not in awp.delta_norms()
            else:
                assert torch.linalg.matrix_rank(awp.delta(n).detach()).item() == ranks[n]
    with pytest.raises(ValueError, match="outside"):
        awp.set_ranks({names[0]: 5})
    awp.set_ranks({n: 0 for n in names})  # nothing perturbed: the block sees the unperturbed model
    logits = clf(x).detach()
    with awp.perturbed(lambda: _ce(clf, x, y)):
        assert torch.equal(clf(x), logits)


def test_first_step_matches_sketched_gradient_formula(adapted):
    """Independent check: first normalised step == eta*||W0|| * G P / ||G P||, P = A^T diag(m) A, G = dL/dW."""
    clf, layers, x, y = adapted
    names = list(layers)
    # G from a dense zero hook (not the low-rank code path)
    zeros = {n: torch.zeros_like(p.base_weight(), requires_grad=True) for n, p in layers.items()}
    for n, p in layers.items():
        p.extra_delta = (lambda z: lambda: z)(zeros[n])
    grads = torch.autograd.grad(_ce(clf, x, y), [zeros[n] for n in names])
    for p in layers.values():
        p.extra_delta = None

    rho = 1e-2
    awp = LowRankAWP(layers, AWPSettings(rho=rho, steps=1))
    awp.set_ranks({names[0]: 2})
    awp.init_branches(torch.Generator().manual_seed(3))
    a0 = {n: awp._a[n].detach().clone() for n in names}
    with awp.attached():
        awp.ascend(lambda: _ce(clf, x, y))
    for n, g in zip(names, grads):
        m = torch.zeros(4)
        m[: awp.ranks[n]] = 1
        sketch = g @ a0[n].T @ torch.diag(m) @ a0[n]
        expected = rho * torch.linalg.matrix_norm(layers[n].base_weight()) * sketch / torch.linalg.matrix_norm(sketch)
        assert torch.allclose(awp.delta(n), expected, rtol=1e-3, atol=1e-7)
        assert (g * expected).sum() > 0  # an ascent direction


def test_ascent_raises_loss_more_than_random_perturbation(adapted):
    clf, layers, x, y = adapted
    base = _ce(clf, x, y).item()
    awp = LowRankAWP(layers, AWPSettings(rho=0.05, steps=2))
    with awp.perturbed(lambda: _ce(clf, x, y), generator=torch.Generator().manual_seed(0)):
        adversarial = _ce(clf, x, y).item()
        norms = {n: torch.linalg.matrix_norm(awp.delta(n)) for n in layers}
    g = torch.Generator().manual_seed(1)
    rand = {}
    for n, p in layers.items():
        r = torch.randn(p.base_weight().shape, generator=g)
        rand[n] = r * norms[n] / torch.linalg.matrix_norm(r)
        p.extra_delta = (lambda t: lambda: t)(rand[n])
    random_loss = _ce(clf, x, y).item()
    for p in layers.values():
        p.extra_delta = None
    assert adversarial > base
    assert adversarial - base > 3 * abs(random_loss - base)


def test_unnormalised_step_barely_perturbs(adapted):
    """Documents the B_awp = 0 / small A_awp issue: a plain gradient step leaves dW orders below the radius."""
    clf, layers, x, y = adapted
    awp = LowRankAWP(layers, AWPSettings(rho=5e-3, normalize_step=False))
    with awp.perturbed(lambda: _ce(clf, x, y), generator=torch.Generator().manual_seed(0)):
        ratios = [awp.delta_norms()[n] / awp.radius(n) for n in layers]
    assert max(r.item() for r in ratios) < 1e-3


def test_gradients_at_perturbed_point_treat_delta_as_constant(adapted):
    clf, layers, x, y = adapted
    names = list(layers)
    awp = LowRankAWP(layers, AWPSettings(rho=0.05))
    with awp.perturbed(lambda: _ce(clf, x, y), generator=torch.Generator().manual_seed(0)):
        deltas = {n: awp.delta(n).detach().clone() for n in names}
        branch = awp.branch_tensors()
        assert all(not t.requires_grad for t in branch)
        _ce(clf, x, y).backward()
    ours = [p.grad.clone() for p in lora_parameters(clf.model)]
    # Reference: a copy of the model whose frozen W0 has dW folded in, no hook at all.
    ref = copy.deepcopy(clf)
    ref_layers = lora_layers(ref.model)
    with torch.no_grad():
        for n in names:
            ref_layers[n].base_weight().add_(deltas[n])
    for p in ref.model.parameters():
        p.grad = None
    _ce(ref, x, y).backward()
    theirs = [p.grad for p in lora_parameters(ref.model)]
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_first_grads_reuse_matches_plain_ascent(adapted):
    clf, layers, x, y = adapted
    awp = LowRankAWP(layers, AWPSettings(rho=0.02, steps=2))
    awp.init_branches(torch.Generator().manual_seed(5))
    with awp.attached():
        awp.ascend(lambda: _ce(clf, x, y))
        plain = {n: awp.delta(n).detach() for n in layers}
    awp.init_branches(torch.Generator().manual_seed(5))
    with awp.attached():
        loss = _ce(clf, x, y)  # a forward the caller runs anyway (dW = 0)
        first = torch.autograd.grad(loss, awp.branch_tensors(), allow_unused=True)
        awp.ascend(lambda: _ce(clf, x, y), first_grads=first)
        reused = {n: awp.delta(n).detach() for n in layers}
    for n in layers:
        assert torch.allclose(plain[n], reused[n], rtol=1e-4, atol=1e-8)


def test_lowrank_norm_matches_dense():
    u, v = torch.randn(7, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose(lowrank_fro_norm(u, v), torch.linalg.matrix_norm(u @ v))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rho": 0.0}, "rho"), ({"radius": "rel"}, "radius mode"), ({"steps": 0}, "T_awp"),
     ({"step_size": -1.0}, "step size"), ({"max_rank": 0}, "max rank"), ({"init_std": 0.0}, "init std")],
)
def test_settings_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        AWPSettings(**kwargs).validate()
