"""LAAT (CLIP adaptation) after Li et al., CVPR 2024: expanded text anchors + a clean/adversarial cosine term.

The official code trains small CNNs from scratch against fixed CLIP text anchors; it never fine-tunes CLIP.
This is grace-bench's adaptation (every departure is listed in docs/baselines-recent-2.md):

* anchors: the training head (single template "This is a photo of a {}", θ0's frozen text tower) expanded
  by LAAT's rule (``models.head_transform``): ``mu`` and ``theta_max`` are fitted on the suite's training
  classes, recorded in ``config.json`` (``head_transform``) and applied to **every** head built for the run
  after template averaging, so evaluation scores the classifier LAAT trains;
* ``g`` is CLIP's vision tower with its own projection (no extra linear map), initialised at θ0;
* loss: ``CE(cos(g(x_adv), a~)/tau, y) + beta * mean[-cos(g(x), g(x_adv))]``; both branches train;
* attack: PGD on that CE with the model in eval mode; PGD-10 at 4/255 and TeCoA's optimiser are
  grace-bench choices, not LAAT's (PGD-7 at 8/255 with SGD 0.05).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext
from grace_bench.finetune.methods.tecoa import TeCoA
from grace_bench.models.head_transform import anchor_expansion_spec

LAAT_PAPER = ("Li et al., Language-Driven Anchors for Zero-Shot Adversarial Robustness (LAAT), CVPR 2024 "
              "(arXiv 2301.13096)")
CODE = LAAT_PAPER + "; code LixiaoTHU/LAAT @7a78ff4"
OURS = "grace-bench CLIP adaptation of " + LAAT_PAPER


def laat_loss(adv_emb: torch.Tensor, clean_emb: torch.Tensor, anchors: torch.Tensor, y: torch.Tensor, *,
              tau: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ce, cosine term)``: ``CE(cos(adv, anchors)/tau, y) + beta * mean[-cos(clean, adv)]``.

    ``anchors`` is the (D, C) expanded head (unit columns); embeddings are (B, D), unnormalised.
    """
    logits = F.normalize(adv_emb, dim=-1) @ anchors / tau
    ce = F.cross_entropy(logits, y)
    cos_term = -F.cosine_similarity(clean_emb, adv_emb, dim=-1).mean()
    return ce + beta * cos_term, ce, cos_term


class LAAT(Method):
    name = "laat"
    description = "LAAT (CLIP adaptation): CE to expanded text anchors at temperature 0.07 + clean/adv cosine"
    towers = ("vision",)
    template_kind = "single"
    defaults: dict[str, Hyper] = {
        "eps": Hyper(4 / 255, OURS + ": PGD-10 at 4/255, the GRACE threat model (LAAT: 8/255)",
                     "l-inf training radius"),
        "pgd_steps": Hyper(10, OURS + " (LAAT train.py L535-538: 7 steps)", "PGD iterations"),
        "pgd_step_size": Hyper(1 / 255, OURS + " (LAAT: 2/255 at 8/255)", "PGD step size"),
        "tau": Hyper(0.07, OURS + ": 1000 classes at tau 1 give a near-uniform softmax (LAAT --tau default 1; "
                     "its comment suggests 0.07)", "temperature of the anchor logits"),
        "beta": Hyper(1.0, CODE + " train.py L504-529 (TRADES-cos, beta 1)", "weight of the clean/adv cosine term"),
    }
    trainer_defaults = {key: Hyper(h.value, "TeCoA's optimiser, a grace-bench choice for LAAT (CLIP adaptation): "
                                   + h.source) for key, h in TeCoA.trainer_defaults.items()}

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(hparams)
        self.transform: dict[str, Any] | None = None

    def setup(self, ctx: TrainContext) -> None:
        """Fit the expansion on the training classes' anchors and make every head of the run use it."""
        self.transform = anchor_expansion_spec(ctx.build_head(raw=True))
        ctx.head_transform = self.transform
        ctx.refresh_head()

    def head_transform(self) -> dict[str, Any] | None:
        return self.transform

    def _embed(self, ctx: TrainContext, x: torch.Tensor) -> torch.Tensor:
        clf = ctx.classifier
        return ctx.model.encode_image((x - clf.mean) / clf.std).float()

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        anchors = ctx.classifier.head.float()
        tau = float(self.hparams["tau"])

        def ce_per_sample(x_in: torch.Tensor) -> torch.Tensor:
            logits = F.normalize(self._embed(ctx, x_in), dim=-1) @ anchors / tau
            return F.cross_entropy(logits, y, reduction="none")

        x_adv = ctx.pgd(ctx.classifier, x, y, step, loss_fn=ce_per_sample)
        adv, clean = self._embed(ctx, x_adv), self._embed(ctx, x)
        loss, ce, cos_term = laat_loss(adv, clean, anchors, y, tau=tau, beta=float(self.hparams["beta"]))
        acc = ((F.normalize(adv, dim=-1) @ anchors).argmax(dim=1) == y).float().mean()
        return loss, {"ce_adv": ce.detach(), "neg_cos": cos_term.detach(), "adv_acc": acc.detach()}
