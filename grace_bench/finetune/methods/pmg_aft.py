"""PMG-AFT (Wang et al., CVPR 2024): adversarial CE plus two KL terms guided by the pre-trained model.

``L = CE(f_theta(x_adv), y) + alpha * KL(p_theta0(x_adv) || p_theta(x_adv)) + beta * KL(p_theta(x) || p_theta(x_adv))``

Each KL is averaged over the batch (the reference code sums over the batch, which scales the loss with the
batch size; see DESIGN.md). As in the reference code, gradients flow through both ``p_theta(x)`` and
``p_theta(x_adv)``; ``p_theta0`` is the frozen initial model. x_adv is PGD on the CE of the current model,
with the single-template text head; only the vision tower trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext
from grace_bench.finetune.methods.tecoa import FARE_ADAMW

PMG = "Wang et al., Pre-trained Model Guided Fine-Tuning for Zero-Shot Adversarial Robustness (PMG-AFT), CVPR 2024"
PMG_CODE = PMG + ", official code (loss = CE + KL_ori + KL_clean, i.e. unit weights)"
PMG_PROTO = PMG + ", which follows TeCoA's training protocol (eps 1/255, 2 PGD steps of 1/255)"


class PMGAFT(Method):
    name = "pmg-aft"
    description = "adversarial CE + KL to the frozen model's adversarial prediction + KL to the clean prediction"
    towers = ("vision",)
    needs_frozen = True
    template_kind = "single"
    defaults: dict[str, Hyper] = {
        "eps": Hyper(1 / 255, PMG_PROTO, "l-inf training radius"),
        "pgd_steps": Hyper(2, PMG_PROTO, "PGD iterations"),
        "pgd_step_size": Hyper(1 / 255, PMG_PROTO, "PGD step size"),
        "alpha": Hyper(1.0, PMG_CODE, "weight of KL(p_theta0(x_adv) || p_theta(x_adv))"),
        "beta": Hyper(1.0, PMG_CODE, "weight of KL(p_theta(x) || p_theta(x_adv))"),
    }
    trainer_defaults = {
        "lr": Hyper(1e-5, FARE_ADAMW + " (PMG-AFT's code uses SGD)"),
        "weight_decay": Hyper(0.0, PMG + ", code default --weight_decay 0"),
        "batch_size": Hyper(256, PMG + ", code default --batch_size 256"),
        "epochs": Hyper(10.0, PMG + ", code default --epochs 10"),
        "warmup_steps": Hyper(1000, PMG + ", code default --warmup 1000"),
    }

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        assert ctx.frozen is not None
        x_adv = ctx.pgd(ctx.classifier, x, y, step)
        logits_adv = ctx.classifier(x_adv)
        logits_clean = ctx.classifier(x)
        with torch.no_grad():
            logits_ori = ctx.frozen(x_adv)
        log_p_adv = F.log_softmax(logits_adv.float(), dim=1)
        ce = F.nll_loss(log_p_adv, y)
        kl_ori = kl_batchmean(F.log_softmax(logits_ori.float(), dim=1), log_p_adv)
        kl_clean = kl_batchmean(F.log_softmax(logits_clean.float(), dim=1), log_p_adv)
        loss = ce + float(self.hparams["alpha"]) * kl_ori + float(self.hparams["beta"]) * kl_clean
        logs = {"ce_adv": ce.detach(), "kl_ori": kl_ori.detach(), "kl_clean": kl_clean.detach(),
                "adv_acc": (logits_adv.argmax(dim=1) == y).float().mean().detach()}
        return loss, logs


def kl_batchmean(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` summed over classes and averaged over the batch, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()
