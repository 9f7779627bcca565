"""PGD: raises the loss, stays in the ball and in [0,1], leaves the model alone, matches a hand-computed step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grace_bench.attacks.pgd import margin_loss, pgd_attack
from grace_bench.errors import UserError


def _inputs(classifier, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    x[:, :, :2] = 0.0  # pixels on the box boundary exercise the [0,1] clamp
    x[:, :, -2:] = 1.0
    with torch.no_grad():
        y = classifier(x).argmax(dim=1)
    return x, y


def _ce(classifier, x, y):
    with torch.no_grad():
        return F.cross_entropy(classifier(x), y, reduction="none")


@pytest.mark.parametrize("norm,eps,step", [("Linf", 4 / 255, 1 / 255), ("L2", 0.5, 0.1)])
def test_pgd_raises_loss_and_stays_in_ball(tiny_classifier, norm, eps, step):
    x, y = _inputs(tiny_classifier)
    x_adv = pgd_attack(tiny_classifier, x, y, eps=eps, norm=norm, steps=10, step_size=step,
                       generator=torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-7).all()
    assert (size > 0.5 * eps).all()  # it actually moved
    before, after = _ce(tiny_classifier, x, y), _ce(tiny_classifier, x_adv, y)
    assert (after > before).all()


def test_pgd_string_eps_and_margin_loss(tiny_classifier):
    x, y = _inputs(tiny_classifier)
    x_adv = pgd_attack(tiny_classifier, x, y, eps="4/255", steps=5, loss="margin",
                       generator=torch.Generator().manual_seed(1))
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-7
    with torch.no_grad():
        before, after = margin_loss(tiny_classifier(x), y), margin_loss(tiny_classifier(x_adv), y)
    assert (after > before).all()


def test_pgd_targeted_moves_towards_target(tiny_classifier):
    x, y = _inputs(tiny_classifier)
    target = (y + 1) % 10
    x_adv = pgd_attack(tiny_classifier, x, y, eps=8 / 255, steps=10, targeted=True, target=target,
                       generator=torch.Generator().manual_seed(0))
    assert (_ce(tiny_classifier, x_adv, target) < _ce(tiny_classifier, x, target)).all()


def test_pgd_one_step_matches_hand_computed_update(tiny_classifier):
    x, y = _inputs(tiny_classifier)
    x_ref = x.clone().requires_grad_(True)
    loss = F.cross_entropy(tiny_classifier(x_ref), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_ref)
    expected = (x + (2 / 255) * grad.sign()).clamp(x - 4 / 255, x + 4 / 255).clamp(0, 1)
    x_adv = pgd_attack(tiny_classifier, x, y, eps=4 / 255, steps=1, step_size=2 / 255, random_start=False)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-7)

    expected_l2 = x + 0.2 * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    delta = expected_l2 - x
    delta = delta * (0.1 / delta.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
    expected_l2 = (x + delta).clamp(0, 1)
    x_adv = pgd_attack(tiny_classifier, x, y, eps=0.1, norm="L2", steps=1, step_size=0.2, random_start=False)
    torch.testing.assert_close(x_adv, expected_l2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_eps_zero_returns_input(tiny_classifier, norm):
    x, y = _inputs(tiny_classifier)
    x_adv = pgd_attack(tiny_classifier, x, y, eps=0, norm=norm, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, x)


def test_pgd_leaves_model_untouched_and_has_no_host_sync(tiny_classifier, monkeypatch):
    tiny_classifier.train()
    params = list(tiny_classifier.parameters())
    assert all(p.requires_grad for p in params)
    x, y = _inputs(tiny_classifier)

    def no_sync(*args, **kwargs):
        raise AssertionError("host sync inside the PGD loop")

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", no_sync)
        m.setattr(torch.Tensor, "tolist", no_sync)
        pgd_attack(tiny_classifier, x, y, eps=4 / 255, steps=3)
    assert tiny_classifier.training and all(mod.training for mod in tiny_classifier.modules())
    assert all(p.requires_grad and p.grad is None for p in params)


def test_pgd_custom_objective_and_seeded_start(tiny_classifier):
    """FARE-style: maximise the squared embedding distance to the clean embedding."""
    x, _ = _inputs(tiny_classifier)
    with torch.no_grad():
        f0 = tiny_classifier.image_features(x)

    def embedding_distance(x_adv):
        return (tiny_classifier.image_features(x_adv) - f0).pow(2).sum(dim=1)

    start = pgd_attack(tiny_classifier, x, None, eps=4 / 255, steps=0, loss_fn=embedding_distance,
                       generator=torch.Generator().manual_seed(3))
    x_adv = pgd_attack(tiny_classifier, x, None, eps=4 / 255, steps=10, loss_fn=embedding_distance,
                       generator=torch.Generator().manual_seed(3))
    again = pgd_attack(tiny_classifier, x, None, eps=4 / 255, steps=10, loss_fn=embedding_distance,
                       generator=torch.Generator().manual_seed(3))
    other = pgd_attack(tiny_classifier, x, None, eps=4 / 255, steps=0, loss_fn=embedding_distance,
                       generator=torch.Generator().manual_seed(4))
    assert torch.equal(x_adv, again) and not torch.equal(start, other)
    with torch.no_grad():
        assert (embedding_distance(x_adv) > embedding_distance(start)).all()


def test_pgd_rejects_bad_arguments(tiny_classifier):
    x, y = _inputs(tiny_classifier, n=2)
    with pytest.raises(UserError):
        pgd_attack(tiny_classifier, x, y, eps="four", steps=1)
    with pytest.raises(UserError):
        pgd_attack(tiny_classifier, x, y, eps=0.1, norm="L7", steps=1)
    with pytest.raises(ValueError):
        pgd_attack(tiny_classifier, x, None, eps=0.1, steps=1)
