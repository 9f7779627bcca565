"""AGFT (Cui et al., CVPR 2026): soft cross-entropy to the frozen model's tempered clean prediction.

``p0 = softmax(kappa * s * cos(f_theta0(x), T))`` (theta0 on the clean image, no gradient),
``q = softmax(s * cos(f_theta(x_adv), T))`` and ``L = mean[-sum_c p0_c log q_c]`` (= KL(p0 || q) + H(p0)).
There are no hard labels and no clean term. x_adv is PGD maximising the same soft CE against p0 with theta
frozen. The scale s is used only inside the loss and the attack; ``logit_scale`` and the text tower stay
frozen, and evaluation uses the model's own scale. By default s is read relative to the model's logit scale
(``agft_relative_scale``: s * exp(logit_scale) / 100), which is the official s on CLIP (scale 100) and keeps
the method's sharpening ratio on models with another scale (micro-CLIP: 14.2). Only the vision tower trains.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from grace_bench.errors import UserError
from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext
from grace_bench.finetune.methods.tecoa import FARE_ADAMW

AGFT = "Cui et al., AGFT (CVPR 2026, arXiv 2603.29410)"
AGFT_CODE = AGFT + ", code YuboCui/AGFT@0031a8f"
AGFT_README = AGFT_CODE + " README training command (--method_args AGFT logit_scale 180, scale_ratio 0.4)"
AGFT_MAIN = "main.py L24 default (logit_scale 100, scale_ratio 1)"
CLIP_LOGIT_SCALE = 100.0  # exp(logit_scale) of OpenAI CLIP, the model AGFT's s was chosen for


class AGFT(Method):
    name = "agft"
    description = "soft CE of the adversarial prediction (scale s) against theta0's clean prediction (scale kappa*s)"
    towers = ("vision",)
    needs_frozen = True
    template_kind = "single"
    defaults: dict[str, Hyper] = {
        "eps": Hyper(1 / 255, AGFT_CODE + " main.py L71-73 (--train_eps 1/255)", "l-inf training radius"),
        "pgd_steps": Hyper(2, AGFT_CODE + " main.py L71-73 (--train_steps 2)", "PGD iterations"),
        "pgd_step_size": Hyper(1 / 255, AGFT_CODE + " main.py L71-73 (--train_alpha 1/255)", "PGD step size"),
        "agft_scale": Hyper(180.0, AGFT_README + f"; alternative: {AGFT_MAIN}",
                            "s: logit scale of the trained model's adversarial prediction in loss and attack"),
        "agft_kappa": Hyper(0.4, AGFT_README + f"; alternative: {AGFT_MAIN}",
                            "kappa: the frozen model's clean prediction uses scale kappa * s (temperature)"),
        "agft_relative_scale": Hyper(True, AGFT + "'s s = 180 was set for CLIP's logit scale of 100; grace-bench "
                                     "scales it by the model's own logit scale / 100 (identical on CLIP, whose "
                                     "scale is 100; micro-CLIP's is 14.2)",
                                     "use s * exp(logit_scale) / 100 instead of the absolute s"),
    }
    trainer_defaults = {
        "lr": Hyper(1e-5, FARE_ADAMW + " (AGFT's README uses SGD, momentum 0.9, lr 4e-4: main.py L110-114)"),
        "weight_decay": Hyper(0.0, AGFT_CODE + " main.py L110-114 (--weight_decay 0)"),
        "batch_size": Hyper(256, AGFT_CODE + " README (128 per GPU on 2 GPUs under DDP)"),
        "epochs": Hyper(10.0, AGFT_CODE + " main.py L103 (--epoch 10)"),
        "warmup_steps": Hyper(1000, AGFT_CODE + " main.py (--warmup_t 1000), train.py L187-189 (timm cosine)"),
    }

    scale: float | None = None  # s actually used (set by setup)

    @classmethod
    def resolve_hparams(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """The base resolution plus a check that s and kappa are positive numbers."""
        out = super().resolve_hparams(overrides)
        for key in ("agft_scale", "agft_kappa"):
            if not math.isfinite(float(out[key])) or float(out[key]) <= 0:
                raise UserError(f"method_args.{key} must be a positive number, got {out[key]!r}; "
                                f"pass --{key.replace('_', '-')} {cls.defaults[key].value}")
        return out

    def setup(self, ctx: TrainContext) -> None:
        self.scale = float(self.hparams["agft_scale"])
        if self.hparams["agft_relative_scale"]:  # logit_scale is frozen: read it once, no host sync per step
            self.scale *= float(ctx.model.logit_scale.detach().exp()) / CLIP_LOGIT_SCALE

    def config_record(self) -> dict[str, Any]:
        """The base record plus the effective s (after ``agft_relative_scale``) for config.json."""
        return {**super().config_record(), "agft_effective_scale": self.scale}

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, _ = batch
        assert ctx.frozen is not None
        if self.scale is None:
            self.setup(ctx)
        s, kappa = float(self.scale), float(self.hparams["agft_kappa"])
        head = ctx.classifier.head
        with torch.no_grad():
            teacher = torch.softmax(kappa * s * (ctx.frozen.image_features(x).float() @ head), dim=1)

        def per_sample(x_in: torch.Tensor) -> torch.Tensor:
            return soft_cross_entropy(s * (ctx.classifier.image_features(x_in).float() @ head), teacher)

        x_adv = ctx.pgd(ctx.classifier, x, None, step, loss_fn=per_sample)  # theta frozen inside
        loss = per_sample(x_adv).mean()
        return loss, {"soft_ce_adv": loss.detach()}


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-sum_c p_c log softmax(logits)_c`` for target probabilities ``p`` (B, C) -> (B,)."""
    return -(target_probs * torch.log_softmax(logits, dim=1)).sum(dim=1)
