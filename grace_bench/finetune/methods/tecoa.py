"""TeCoA (Mao et al., ICLR 2023): cross-entropy on PGD adversarial images against the frozen text head.

The head uses the single template "This is a photo of a {}" (evaluation still uses the suite's templates);
only the vision tower trains. The PGD inner maximisation uses the same cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext

TECOA = "Mao et al., Understanding Zero-Shot Adversarial Robustness for Large-Scale Models (TeCoA), ICLR 2023"
TECOA_RUN = TECOA + ", README fine-tuning command (--train_eps 1 --train_numsteps 2 --train_stepsize 1, batch 256)"
FARE_ADAMW = ("Schlarmann et al., Robust CLIP (FARE), ICML 2024, who retrain TeCoA with AdamW at this setting; "
              "TeCoA's own SGD settings do not transfer to AdamW")


class TeCoA(Method):
    name = "tecoa"
    description = "cross-entropy on PGD adversarial images vs the frozen single-template text head"
    towers = ("vision",)
    template_kind = "single"
    defaults: dict[str, Hyper] = {
        "eps": Hyper(1 / 255, TECOA_RUN, "l-inf radius of the training attack (pixel space)"),
        "pgd_steps": Hyper(2, TECOA_RUN, "PGD iterations of the training attack"),
        "pgd_step_size": Hyper(1 / 255, TECOA_RUN, "PGD step size"),
    }
    trainer_defaults = {
        "lr": Hyper(1e-5, FARE_ADAMW),
        "weight_decay": Hyper(0.0, TECOA + ", code default --weight_decay 0"),
        "batch_size": Hyper(256, TECOA_RUN),
        "epochs": Hyper(10.0, TECOA + ", code default --epochs 10"),
        "warmup_steps": Hyper(1000, TECOA + ", code default --warmup 1000"),
    }

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        x_adv = ctx.pgd(ctx.classifier, x, y, step)
        logits = ctx.classifier(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"adv_acc": (logits.argmax(dim=1) == y).float().mean().detach()}
