"""FT: end-to-end cross-entropy fine-tuning of the vision tower against the zero-shot head.

The head is the zero-shot head built from the checkpoint's own (frozen) text tower with the suite's
evaluation templates, so the saved checkpoint is a plain OpenCLIP model whose rebuilt head is the very
head it was trained with. (WiSE-FT's reference code also trains the linear head; a trained head cannot
live in an OpenCLIP state dict, so here it stays the zero-shot head, as in GRACE's task loss.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext

WISE_FT = "Wortsman et al., Robust fine-tuning of zero-shot models (WiSE-FT), CVPR 2022, ImageNet end-to-end FT"


class FT(Method):
    name = "ft"
    description = "end-to-end cross-entropy with the zero-shot head as the (frozen) classifier"
    towers = ("vision",)
    template_kind = "suite"
    defaults: dict[str, Hyper] = {
        "label_smoothing": Hyper(0.0, WISE_FT + " (no label smoothing)", "cross-entropy label smoothing"),
    }
    trainer_defaults = {
        "lr": Hyper(3e-5, WISE_FT),
        "weight_decay": Hyper(0.1, WISE_FT),
        "batch_size": Hyper(512, WISE_FT),
        "epochs": Hyper(10.0, WISE_FT),
        "warmup_steps": Hyper(500, WISE_FT),
    }

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        logits = ctx.classifier(x)
        loss = F.cross_entropy(logits, y, label_smoothing=float(self.hparams["label_smoothing"]))
        return loss, {"train_acc": (logits.argmax(dim=1) == y).float().mean().detach()}
