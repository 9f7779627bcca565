"""Each method trains on tiny data, touches only its towers, and computes the loss its paper defines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grace_bench.data.micro_text import SINGLE_TEMPLATE
from grace_bench.finetune import checkpointing as ckpt
from grace_bench.finetune.methods import get_method, list_methods
from grace_bench.finetune.methods.flyp import contrastive_loss
from grace_bench.finetune.methods.pmg_aft import kl_batchmean
from grace_bench.finetune.trainer import Trainer
from tests.micro_scoring import RECIPE, ROBUST_ARGS, micro_scores

from .test_trainer import cfg_for, fresh_clip, run, tiny_data

BUILTIN = ["fare", "flyp", "ft", "pmg-aft", "tecoa"]


def test_registry_and_paper_sources():
    assert set(BUILTIN) <= set(list_methods())
    for name in BUILTIN:
        cls = get_method(name)
        assert {"lr", "weight_decay", "batch_size", "warmup_steps"} <= set(cls.trainer_defaults), name
        assert "epochs" in cls.trainer_defaults or "max_steps" in cls.trainer_defaults
        for key, hyper in {**cls.defaults, **cls.trainer_defaults}.items():
            assert " et al." in hyper.source, f"{name}.{key} names no paper"


@pytest.mark.parametrize("method, lora, towers", [
    ("ft", 0, {"vision"}), ("tecoa", 0, {"vision"}), ("fare", 0, {"vision"}), ("pmg-aft", 0, {"vision"}),
    ("flyp", 0, {"vision", "text", "logit"}), ("ft", 4, {"vision"}), ("tecoa", 4, {"vision"}),
])
def test_each_method_trains_only_its_towers(tmp_path, method, lora, towers):
    from grace_bench.finetune.methods.base import tower_of

    res = run(cfg_for(tmp_path, method=method, lora_rank=lora, max_steps=2, lr=1e-2,
                      method_args={"pgd_steps": 2} if method in ("tecoa", "fare", "pmg-aft") else {}))
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    start, end = fresh_clip().model.state_dict(), ckpt.load_tensors(res.run_dir / "model.safetensors")
    changed = {tower_of(k) for k in start if not torch.equal(start[k], end[k])}
    assert changed == towers
    if lora:
        adapters = ckpt.load_tensors(res.last_checkpoint / "adapters.safetensors")
        assert len(adapters) == 2 * 8 and all(".lora_" in k for k in adapters)


def _trainer(tmp_path, method, **kw):
    data = tiny_data(16)
    return Trainer(cfg_for(tmp_path, method=method, **kw), clip=fresh_clip(), train_data=data, val_data=None), data


def test_training_heads_use_the_right_templates(tmp_path):
    tecoa, _ = _trainer(tmp_path, "tecoa", out=str(tmp_path / "a"))
    assert tecoa.ctx.train_templates == [SINGLE_TEMPLATE]
    ft, _ = _trainer(tmp_path, "ft", out=str(tmp_path / "b"))
    from grace_bench.data.micro import MICRO_TEMPLATES
    from grace_bench.models.zero_shot import build_zero_shot_head

    assert ft.ctx.train_templates == list(MICRO_TEMPLATES)
    clip = ft.clip
    ref = build_zero_shot_head(clip.model.eval(), clip.tokenizer, ft.ctx.classnames, MICRO_TEMPLATES)
    torch.testing.assert_close(ft.ctx.classifier.head, ref)


def test_pmg_aft_loss_matches_its_formula(tmp_path, monkeypatch):
    tr, data = _trainer(tmp_path, "pmg-aft", method_args={"alpha": 0.7, "beta": 1.3})
    ctx, method = tr.ctx, tr.method
    x, y = data.tensors
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    monkeypatch.setattr(ctx, "pgd", lambda clf, xx, yy, step, **kw: x_adv)
    with torch.no_grad():
        # make theta differ from theta0 so the first KL is not zero
        ctx.model.visual.proj.add_(0.05 * torch.randn_like(ctx.model.visual.proj))
    loss, logs = method.loss(ctx, (x, y), 0)
    with torch.no_grad():
        la, lc, lo = ctx.classifier(x_adv), ctx.classifier(x), ctx.frozen(x_adv)
        ref_kl_ori = F.kl_div(F.log_softmax(la, 1), F.log_softmax(lo, 1), reduction="batchmean", log_target=True)
        ref_kl_clean = F.kl_div(F.log_softmax(la, 1), F.log_softmax(lc, 1), reduction="batchmean", log_target=True)
        ref = F.cross_entropy(la, y) + 0.7 * ref_kl_ori + 1.3 * ref_kl_clean
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    assert ref_kl_ori > 1e-4
    torch.testing.assert_close(logs["kl_ori"], ref_kl_ori, rtol=1e-5, atol=1e-7)
    p, q = torch.randn(5, 7).log_softmax(1), torch.randn(5, 7).log_softmax(1)
    torch.testing.assert_close(kl_batchmean(p, q), F.kl_div(q, p, reduction="batchmean", log_target=True))


def test_fare_loss_and_inner_maximisation(tmp_path):
    tr, data = _trainer(tmp_path, "fare", method_args={"eps": "0", "pgd_steps": 1})
    ctx, method = tr.ctx, tr.method
    x, y = data.tensors
    loss, _ = method.loss(ctx, (x, y), 0)
    assert loss.item() < 1e-9  # theta == theta0 and no perturbation budget (fast-path rounding only)
    with torch.no_grad():
        ctx.model.visual.proj.add_(0.05 * torch.randn_like(ctx.model.visual.proj))
    loss, _ = method.loss(ctx, (x, y), 0)
    norm = ctx.classifier
    with torch.no_grad():
        e = ctx.model.encode_image((x - norm.mean) / norm.std)
        e0 = ctx.frozen.model.encode_image((x - norm.mean) / norm.std)
    torch.testing.assert_close(loss.detach(), (e - e0).pow(2).sum(1).mean(), rtol=1e-5, atol=1e-7)
    # with a budget, PGD on the same loss finds a larger embedding distance than the clean image
    method.hparams.update(eps=8 / 255, pgd_steps=5, pgd_step_size=2 / 255)
    adv_loss, _ = method.loss(ctx, (x, y), 0)
    assert adv_loss.item() > loss.item()


def test_tecoa_attacks_within_budget_and_raises_ce(tmp_path):
    tr, data = _trainer(tmp_path, "tecoa", method_args={"eps": "8/255", "pgd_steps": 3, "pgd_step_size": "3/255"})
    ctx = tr.ctx
    x, y = data.tensors
    x_adv = ctx.pgd(ctx.classifier, x, y, step=0)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in ctx.model.parameters())
    loss, _ = tr.method.loss(ctx, (x, y), 0)
    with torch.no_grad():
        clean = F.cross_entropy(ctx.classifier(x), y)
    assert loss.item() > clean.item()
    # same step -> same random start -> same adversarial images (reproducible across resume)
    torch.testing.assert_close(ctx.pgd(ctx.classifier, x, y, step=0), x_adv)


def test_flyp_contrastive_loss_matches_open_clip_and_masks_same_class():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    scale = torch.tensor(20.0)
    torch.testing.assert_close(contrastive_loss(img, txt, scale), ClipLoss()(img, txt, scale))
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    masked = contrastive_loss(img, txt, scale, labels)
    logits = scale * img @ txt.T
    ref = 0.0
    for i in range(6):
        keep = [j for j in range(6) if j == i or labels[j] != labels[i]]
        ref += -torch.log_softmax(logits[i, keep], 0)[keep.index(i)] / 12
        ref += -torch.log_softmax(logits[keep, i], 0)[keep.index(i)] / 12
    torch.testing.assert_close(masked, ref)


def test_flyp_rebuilds_the_head_from_the_trained_text_tower(tmp_path):
    res = run(cfg_for(tmp_path, method="flyp", max_steps=2, lr=1e-2))
    from grace_bench.models.checkpoints import load_checkpoint

    trained = load_checkpoint(str(res.run_dir))
    start = fresh_clip()
    tokens = start.tokenizer(["a photo of the digit three."])
    with torch.no_grad():
        assert not torch.allclose(trained.model.encode_text(tokens), start.model.encode_text(tokens))
    cfg = (res.run_dir / "config.json").read_text()
    assert '"text"' in cfg and '"logit"' in cfg


# ---------------------------------------------------------------------------------------------------------------
# Integration on the micro suite (pretrained micro-CLIP, the suite's real train/val/test splits, fixed seeds).
# Measured on this recipe (30 steps, batch 32, lr 6e-4; robust methods train at eps 4/255 with 2 PGD steps of
# 3/255; robust accuracy = PGD-10 at 4/255, step 1/255, on the first 200 micro test images; see the report):
#   zero-shot test acc 0.883 -> FT 0.944 (+6.1 points)
#   PGD robust acc: FT 0.080; TeCoA 0.335 (+25.5); FARE 0.375 (+29.5); PMG-AFT 0.325 (+24.5)
# The asserted margins are about half of these, to absorb platform float differences, not regressions.
# ---------------------------------------------------------------------------------------------------------------
FT_OVER_ZS_MIN = 0.03
ROBUST_OVER_FT_MIN = 0.12
N_ADV = 200


def _micro_scores(run_dir, test) -> dict[str, float]:
    return micro_scores(run_dir, test, N_ADV)


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    from grace_bench.data.micro import micro_dataset
    from grace_bench.finetune.config import FinetuneConfig
    from grace_bench.finetune.trainer import train
    from grace_bench.models.micro import SHIPPED_WEIGHTS

    root = tmp_path_factory.mktemp("micro-study")
    test = micro_dataset("micro", "test")
    zs_dir = root / "zs"  # zero-shot micro-CLIP as a run-like folder, scored by the same code path
    from grace_bench.models.micro import load_micro_clip
    from grace_bench.utils.atomic import atomic_save_safetensors, atomic_write_json

    zs = load_micro_clip()
    atomic_save_safetensors(zs_dir / "model.safetensors", zs.model.state_dict(), metadata={"arch": zs.arch})
    atomic_write_json(zs_dir / "config.json", {"arch": zs.arch, "base": "micro", "method": "zero-shot"})
    scores = {"zero-shot": _micro_scores(zs_dir, test)}
    runs = {}
    for method in ("ft", "tecoa", "fare", "pmg-aft"):
        args = {} if method == "ft" else dict(ROBUST_ARGS)
        cfg = FinetuneConfig(method=method, base="micro", suite="micro", out=str(root / method), progress=False,
                             method_args=args, **RECIPE)
        runs[method] = train(cfg).run_dir
        scores[method] = _micro_scores(runs[method], test)
    for name, kw in {"flyp": dict(method="flyp"), "ft-lora": dict(method="ft", lora_rank=8),
                     "tecoa-lora": dict(method="tecoa", lora_rank=8, method_args=dict(ROBUST_ARGS))}.items():
        cfg = FinetuneConfig(base="micro", suite="micro", out=str(root / name), progress=False,
                             **{**RECIPE, "max_steps": 3, **kw})
        runs[name] = train(cfg).run_dir
    print("micro study scores:", {k: {m: round(v, 4) for m, v in d.items()} for k, d in scores.items()})
    return {"scores": scores, "runs": runs, "root": root, "weights": SHIPPED_WEIGHTS}


@pytest.mark.slow
def test_micro_ft_raises_id_accuracy_over_zero_shot_by_3_points(micro_study):
    s = micro_study["scores"]
    gain = s["ft"]["acc"] - s["zero-shot"]["acc"]
    assert gain >= FT_OVER_ZS_MIN, f"FT {s['ft']['acc']:.4f} vs zero-shot {s['zero-shot']['acc']:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tecoa", "fare", "pmg-aft"])
def test_micro_robust_methods_raise_pgd_accuracy_over_ft_by_12_points(micro_study, method):
    s = micro_study["scores"]
    gain = s[method]["robust"] - s["ft"]["robust"]
    assert gain >= ROBUST_OVER_FT_MIN, f"{method} robust {s[method]['robust']:.4f} vs FT {s['ft']['robust']:.4f}"


@pytest.mark.slow
def test_grace_bench_eval_reads_every_method_run(micro_study, capsys):
    from grace_bench.cli import main

    out = micro_study["root"] / "results"
    for name, run_dir in micro_study["runs"].items():
        code = main(["eval", str(run_dir), "--suite", "micro", "--datasets", "micro", "--attack", "none",
                     "--limit", "30", "--out", str(out), "--device", "cpu", "--no-progress", "--label", name])
        assert code == 0, name
    summaries = list(out.glob("summary-*.json"))
    assert len(summaries) == len(micro_study["runs"])
