"""Sim-CLIP, AdvCLIP-LoRA and LAAT (CLIP adaptation): losses on constructed inputs, their machinery, and micro runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.finetune.methods.advclip_lora import advclip_step_size
from grace_bench.finetune.methods.laat import laat_loss
from grace_bench.finetune.methods.simclip import siamese_loss, simclip_loss
from grace_bench.finetune.trainer import Trainer, cosine_schedule
from grace_bench.models.head_transform import anchor_statistics, apply_head_transform, expand_anchors
from tests.micro_scoring import RECIPE, ROBUST_ARGS, micro_scores

from .test_trainer import cfg_for, fresh_clip, run, tiny_data


def _trainer(tmp_path, method, **kw):
    data = tiny_data(16)
    return Trainer(cfg_for(tmp_path, method=method, **kw), clip=fresh_clip(), train_data=data, val_data=None), data


@pytest.mark.parametrize("method, origin", [
    ("sim-clip", "speedlab-git/SimCLIP @2388a87"), ("advclip-lora", "sajjad-ucsb/AdvCLIP-LoRA @7b84015"),
    ("laat", "LixiaoTHU/LAAT @7a78ff4"),
])
def test_every_default_names_its_paper_and_the_method_is_registered(method, origin):
    from grace_bench.finetune.methods import get_method, list_methods
    from grace_bench.study.recipe import BY_LABEL

    cls = get_method(method)
    assert method in list_methods() and BY_LABEL[method].group == "recent" and BY_LABEL[method].adversarial
    hypers = {**cls.defaults, **cls.trainer_defaults}
    assert {"lr", "weight_decay", "batch_size", "warmup_steps"} <= set(cls.trainer_defaults)
    assert all(" et al." in h.source or "Hossain & Imteaj" in h.source for h in hypers.values()), method
    assert any(origin in h.source for h in hypers.values())  # file and line at the official commit
    if method == "laat":
        assert "LAAT (CLIP adaptation)" in cls.description and "LAAT (CLIP adaptation)" in BY_LABEL[method].description


@pytest.mark.parametrize("method, lora, towers", [
    ("sim-clip", 0, {"vision"}), ("sim-clip", 4, {"vision"}), ("laat", 0, {"vision"}), ("laat", 4, {"vision"}),
    ("advclip-lora", 2, {"vision", "text"}),
])
def test_each_recent_method_and_its_lora_variant_trains_only_its_towers(tmp_path, method, lora, towers):
    from grace_bench.finetune import checkpointing as ckpt
    from grace_bench.finetune.methods.base import tower_of

    res = run(cfg_for(tmp_path, method=method, lora_rank=lora, max_steps=2, lr=1e-2,
                      method_args={} if method == "advclip-lora" else {"pgd_steps": 1}))
    assert all(math.isfinite(r["loss"]) for r in res.history if "loss" in r)
    start, end = fresh_clip().model.state_dict(), ckpt.load_tensors(res.run_dir / "model.safetensors")
    assert {tower_of(k) for k in start if not torch.equal(start[k], end[k])} == towers


# ------------------------------------------------------------------------------------------------ Sim-CLIP

def test_simclip_loss_is_minus_half_for_identical_directions_and_zero_for_orthogonal():
    e = torch.randn(5, 8)
    assert float(simclip_loss(e, e)) == pytest.approx(-0.5)
    assert float(simclip_loss(3.0 * e, e)) == pytest.approx(-0.5)  # cosine: the norm does not matter
    a, b = torch.eye(8)[:4], torch.eye(8)[4:]
    assert float(simclip_loss(a, b)) == pytest.approx(0.0, abs=1e-7)
    assert float(siamese_loss(e, e)) == pytest.approx(-1.0)


def test_simclip_target_gets_no_gradient_but_the_siamese_clean_branch_does():
    adv, target = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    simclip_loss(adv, target).backward()
    assert adv.grad is not None and adv.grad.abs().sum() > 0 and target.grad is None
    adv.grad = None
    siamese_loss(adv, target).backward()
    assert target.grad is not None and target.grad.abs().sum() > 0


def _momentum_by_hand(x0: float, c: float, alpha: float, steps: int, momentum: float) -> float:
    x, v = x0, 0.0
    for _ in range(steps):
        g = math.copysign(1.0, -2 * (x - c)) if x != c else 0.0
        v = momentum * v + g
        x += alpha * (math.copysign(1.0, v) if v else 0.0)
    return x


def test_momentum_pgd_matches_the_hand_computed_trajectory():
    """Objective -(x - c)^2: plain PGD oscillates around c, momentum overshoots (v <- 0.9 v + sign g, step sign v)."""
    from grace_bench.attacks.pgd import pgd_attack

    x0, c, alpha = 0.5, 0.575, 0.03
    x = torch.full((1, 1), x0)

    def objective(xa):
        return -((xa - c) ** 2).sum(dim=1)

    out = {m: float(pgd_attack(torch.nn.Identity(), x, None, eps=0.3, steps=5, step_size=alpha, random_start=False,
                               loss_fn=objective, momentum=m)) for m in (0.0, 0.9)}
    assert out[0.9] == pytest.approx(_momentum_by_hand(x0, c, alpha, 5, 0.9), abs=1e-6)
    assert out[0.0] == pytest.approx(_momentum_by_hand(x0, c, alpha, 5, 0.0), abs=1e-6)
    assert out[0.9] == pytest.approx(0.65, abs=1e-6) and out[0.0] == pytest.approx(0.59, abs=1e-6)
    with pytest.raises(UserError, match="momentum"):
        pgd_attack(torch.nn.Identity(), x, None, eps=0.3, norm="L2", loss_fn=objective, momentum=0.9)


def test_simclip_loss_on_the_model_and_the_logged_preset_uses_sgd(tmp_path, monkeypatch):
    tr, data = _trainer(tmp_path, "sim-clip", method_args={"pgd_steps": 1}, out=str(tmp_path / "a"))
    assert isinstance(tr.optimizer, torch.optim.AdamW)
    ctx, method = tr.ctx, tr.method
    x, y = data.tensors
    monkeypatch.setattr(ctx, "pgd", lambda clf, xx, yy, step, **kw: xx)  # x_adv = x and theta = theta0
    loss, _ = method.loss(ctx, (x, y), 0)
    assert float(loss) == pytest.approx(-0.5, abs=1e-5)
    logged, _ = _trainer(tmp_path, "sim-clip", method_args={"preset": "logged"}, out=str(tmp_path / "b"))
    assert isinstance(logged.optimizer, torch.optim.SGD) and logged.optimizer.defaults["momentum"] == 0.9
    with pytest.raises(UserError, match="preset"):
        _trainer(tmp_path, "sim-clip", method_args={"preset": "adam"}, out=str(tmp_path / "c"))


# ------------------------------------------------------------------------------------------------ AdvCLIP-LoRA

def test_advclip_step_size_schedule_values():
    assert advclip_step_size(2.0, 0) == pytest.approx(0.05 * (0.5 + 0.5 / 300))
    assert advclip_step_size(2.0, 299) == pytest.approx(0.05)  # the last annealed step reaches the base
    assert advclip_step_size(0.5, 150) == pytest.approx(0.05 * (2.0 - 1.0 / 150))
    assert advclip_step_size(0.5, 300) == 0.05 and advclip_step_size(123.0, 10_000) == 0.05
    assert advclip_step_size(0.0, 0) > 1e20  # from delta = 0 the first step saturates the clip


def test_advclip_defaults_give_rank2_qkv_adapters_on_both_towers_and_a_cosine_floor(tmp_path):
    tr, _ = _trainer(tmp_path, "advclip-lora", lr=2e-4, warmup_steps=0, max_steps=4)
    layers = tr.ctx.lora
    assert layers and all(p.slices == 3 and p.rank == 2 and p.dropout == 0.25 for p in layers.values())
    assert {n.split(".")[0] == "visual" for n in layers} == {True, False}
    assert all(p.scale == pytest.approx(1 / math.sqrt(2)) for p in layers.values())
    assert tr.method.min_lr_factor(tr.cfg) == pytest.approx(1e-6 / 2e-4)
    for _ in range(4):
        tr.scheduler.step()
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)
    assert cosine_schedule(0, 10, 0.25)(0) == 1.0 and cosine_schedule(0, 10, 0.25)(10) == pytest.approx(0.25)


def test_advclip_universal_delta_is_shared_by_the_batch_carried_and_reset_each_epoch(tmp_path, monkeypatch):
    tr, data = _trainer(tmp_path, "advclip-lora", method_args={"eps": "8/255"})
    ctx, method = tr.ctx, tr.method
    x, y = data.tensors
    x = 0.1 + 0.8 * x  # away from the [0, 1] bounds: x_adv - x is delta itself
    seen = []
    original = method.logits
    monkeypatch.setattr(method, "logits", lambda c, xa, text: seen.append(xa.detach()) or original(c, xa, text))
    method.loss(ctx, (x, y), 0)
    delta = method.delta
    assert delta.shape == x.shape[1:] and float(delta.abs().max()) == pytest.approx(8 / 255)
    final = seen[-1] - x
    torch.testing.assert_close(final, delta.expand_as(x))  # one delta for every image
    assert len(seen) == 2 + 1  # m = 2 ascent passes, then the training pass
    method.hparams["ascent_steps"] = 0
    method.loss(ctx, (x, y), 1)  # same epoch: carried, not reset
    torch.testing.assert_close(method.delta, delta)
    method.loss(ctx, (x, y), ctx.steps_per_epoch)  # first step of the next epoch: reset to 0
    assert float(method.delta.abs().max()) == 0.0


def test_advclip_trains_and_exports_merged_weights(tmp_path):
    from grace_bench.models.checkpoints import load_checkpoint

    data = tiny_data(16)
    clip = fresh_clip()
    cfg = cfg_for(tmp_path, method="advclip-lora", max_steps=2, lr=1e-2)
    tr = Trainer(cfg, clip=clip, train_data=data, val_data=data)
    res = tr.run()
    saved = load_checkpoint(str(res.run_dir))
    assert not any("lora" in k for k in saved.model.state_dict())
    x = data.tensors[0][:4]
    clip.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(saved.model.encode_image(x), clip.model.encode_image(x))
        tokens = clip.tokenizer(["a photo of a three."])
        torch.testing.assert_close(saved.model.encode_text(tokens), clip.model.encode_text(tokens))
        assert not torch.allclose(saved.model.encode_text(tokens), fresh_clip().model.encode_text(tokens))
    with pytest.raises(UserError, match="perturbation"):
        _trainer(tmp_path, "advclip-lora", method_args={"perturbation": "patch"}, out=str(tmp_path / "x"))


def test_advclip_per_sample_pgd_option_runs(tmp_path):
    res = run(cfg_for(tmp_path, method="advclip-lora", max_steps=2,
                      method_args={"perturbation": "per_sample_pgd", "pgd_steps": 1}))
    assert all(math.isfinite(r["loss"]) for r in res.history if "loss" in r)


# ------------------------------------------------------------------------------------------------ LAAT

def test_anchor_expansion_scales_angles_to_mu_keeps_unit_norm_and_order():
    g = torch.Generator().manual_seed(0)
    head = F.normalize(torch.randn(16, 7, generator=g) + 2.0, dim=0)  # clustered anchors, as CLIP's are
    mu, theta_max = anchor_statistics(head)
    theta = torch.arccos((mu @ head).clamp(-1, 1))
    out = expand_anchors(head, mu, theta_max)
    torch.testing.assert_close(out.norm(dim=0), torch.ones(7))
    new_theta = torch.arccos((mu @ out).clamp(-1, 1))
    torch.testing.assert_close(new_theta, theta * (math.pi / 2) / theta_max, atol=1e-4, rtol=1e-4)
    assert torch.equal(new_theta.argsort(), theta.argsort())
    assert float(new_theta.max()) == pytest.approx(math.pi / 2, abs=1e-4)
    # each anchor stays in the plane of mu and itself: its component orthogonal to mu keeps its direction
    orth_in = F.normalize(head - mu[:, None] * (mu @ head)[None], dim=0)
    orth_out = F.normalize(out - mu[:, None] * (mu @ out)[None], dim=0)
    torch.testing.assert_close(orth_out, orth_in, atol=1e-4, rtol=1e-4)


def test_laat_loss_value_on_constructed_embeddings():
    anchors = torch.eye(3)
    adv = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    y = torch.tensor([0, 1])
    loss, ce, cos_term = laat_loss(adv, adv.clone(), anchors, y, tau=0.5, beta=2.0)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # unit cosines / tau
    expected_ce = F.cross_entropy(logits, y)
    assert float(ce) == pytest.approx(float(expected_ce)) and float(cos_term) == pytest.approx(-1.0)
    assert float(loss) == pytest.approx(float(expected_ce) - 2.0)


def test_laat_records_its_expansion_and_every_eval_head_applies_it(tmp_path):
    from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_TEMPLATES
    from grace_bench.data.micro_text import SINGLE_TEMPLATE
    from grace_bench.data.suites import get_suite
    from grace_bench.eval.context import classifier_for
    from grace_bench.models.checkpoints import load_checkpoint
    from grace_bench.models.zero_shot import build_zero_shot_head

    res = run(cfg_for(tmp_path, method="laat", max_steps=2, method_args={"pgd_steps": 1}))
    config = json.loads((res.run_dir / "config.json").read_text())
    spec = config["head_transform"]
    assert spec["kind"] == "anchor_expansion" and 0 < spec["theta_max"] <= math.pi
    start = fresh_clip().model.eval()
    anchors = build_zero_shot_head(start, fresh_clip().tokenizer, MICRO_CLASSNAMES, [SINGLE_TEMPLATE])
    mu, theta_max = anchor_statistics(anchors)  # fitted on theta0's frozen single-template training anchors
    torch.testing.assert_close(torch.tensor(spec["mu"]), mu)
    assert spec["theta_max"] == pytest.approx(theta_max)
    clip = load_checkpoint(str(res.run_dir))
    assert clip.info["head_transform"]["theta_max"] == pytest.approx(spec["theta_max"])
    clf = classifier_for(clip, get_suite("micro"))
    raw = build_zero_shot_head(clip.model.eval(), clip.tokenizer, MICRO_CLASSNAMES, MICRO_TEMPLATES)
    torch.testing.assert_close(clf.head, apply_head_transform(raw, spec))  # after template averaging
    assert not torch.allclose(clf.head, raw)
    # the same weights under the plain head are another classifier: results and caches must not mix them
    bare = load_checkpoint(str(res.run_dir / "model.safetensors"))
    assert "head_transform" not in bare.info and bare.fingerprint() != clip.fingerprint()
    torch.testing.assert_close(classifier_for(bare, get_suite("micro")).head, raw)


def test_a_garbled_head_transform_is_a_user_error(tmp_path):
    from grace_bench.models.checkpoints import load_checkpoint

    res = run(cfg_for(tmp_path, method="laat", max_steps=1, method_args={"pgd_steps": 1}))
    path = res.run_dir / "config.json"
    config = json.loads(path.read_text())
    config["head_transform"]["theta_max"] = -1
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="head_transform.theta_max"):
        load_checkpoint(str(res.run_dir))


# ------------------------------------------------------------------------------------------------ micro integration
# Same recipe as tests/test_methods.py (30 steps, batch 32, lr 6e-4; eps 4/255, 2 PGD steps of 3/255), robust
# accuracy = PGD-10 at 4/255 on the first 200 micro test images, every head built by eval's classifier_for (so
# LAAT is scored with its expanded head). Measured (robust / ID test acc): FT 0.080 / 0.944; Sim-CLIP 0.365 / 0.883
# (+28.5 pts); AdvCLIP-LoRA 0.165 / 0.891 (+8.5); LAAT 0.315 / 0.869 (+23.5). See docs/baselines-recent-2.md.
N_ADV = 200
ROBUST_OVER_FT_MIN = {"sim-clip": 0.12, "advclip-lora": 0.04, "laat": 0.12}  # about half the measured gains


def _scores(run_dir, test) -> dict[str, float]:
    return micro_scores(run_dir, test, N_ADV)


@pytest.fixture(scope="module")
def recent_study(tmp_path_factory):
    from grace_bench.data.micro import micro_dataset
    from grace_bench.finetune.config import FinetuneConfig
    from grace_bench.finetune.trainer import train

    root = tmp_path_factory.mktemp("recent-study")
    test = micro_dataset("micro", "test")
    scores = {}
    for method in ("ft", "sim-clip", "advclip-lora", "laat"):
        args = {} if method == "ft" else dict(ROBUST_ARGS)
        cfg = FinetuneConfig(method=method, base="micro", suite="micro", out=str(root / method), progress=False,
                             method_args=args, **RECIPE)
        scores[method] = _scores(train(cfg).run_dir, test)
    print("recent methods on micro:", {k: {m: round(v, 4) for m, v in d.items()} for k, d in scores.items()})
    return scores


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sim-clip", "advclip-lora", "laat"])
def test_micro_recent_methods_raise_pgd_accuracy_over_ft(recent_study, method):
    s = recent_study
    gain = s[method]["robust"] - s["ft"]["robust"]
    assert gain >= ROBUST_OVER_FT_MIN[method], \
        f"{method} robust {s[method]['robust']:.4f} vs FT {s['ft']['robust']:.4f}"


def test_advclip_lora_shape_defaults_fill_only_unset_settings_of_lora_runs():
    from grace_bench.finetune.config import FinetuneConfig, config_from_dict
    from grace_bench.finetune.resolve import resolve_config

    base = resolve_config(FinetuneConfig(method="advclip-lora", suite="micro"))
    assert (base.lora_rank, base.lora_alpha, base.lora_dropout, base.lora_split_qkv, base.lora_scaling) == \
        (2, 1.0, 0.25, True, "sqrt")
    assert base.lora_towers == ["vision", "text"] and base.sources["lora_dropout"].startswith("method 'advclip-lora'")
    flags = {"lora_dropout": 0.0, "lora_scaling": "standard"}
    given = resolve_config(config_from_dict(flags, FinetuneConfig(method="advclip-lora", suite="micro"),
                                            source="command line"))
    assert given.lora_dropout == 0.0 and given.lora_scaling == "standard" and given.lora_split_qkv is True
    full = resolve_config(FinetuneConfig(method="advclip-lora", suite="micro", lora_rank=0))
    assert full.lora_dropout == 0.0 and full.lora_split_qkv is None  # no LoRA: no LoRA shape
    other = resolve_config(FinetuneConfig(method="tecoa", suite="micro", lora_rank=4))
    assert other.lora_split_qkv is None and other.lora_alpha is None  # other methods keep the plain layout
    with pytest.raises(UserError, match="lora_scaling"):
        resolve_config(FinetuneConfig(method="advclip-lora", suite="micro", lora_scaling="cube"))
