"""Sim-CLIP (Hossain & Imteaj, 2024): FARE with a cosine objective and a momentum PGD inner attack.

Loss (``simclip_target=frozen``, the official code that produced the released checkpoints):
``L = -1/2 * mean cos(phi_theta(x_adv), sg phi_theta0(x))``; the code's symmetric second half has no gradient
path, so this is all of it. ``simclip_target=current`` is the paper's weight-shared siamese form,
``1/2 D(phi(x_adv), sg phi(x)) + 1/2 D(phi(x), sg phi(x_adv))`` with ``D(p, z) = -mean cos(p, z)``, where the
clean branch trains too. The inner attack is l-inf momentum PGD (``v <- 0.9 v + sign(g)``, step ``sign(v)``)
on FARE's squared-L2 distance to the frozen clean embedding (``inner_loss=cos``: on the negative cosine).
Only the vision tower trains. ``preset=logged`` swaps AdamW for SGD with momentum 0.9 (the logged run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.finetune.methods.base import Batch, Hyper, TrainContext
from grace_bench.finetune.methods.fare import FARE

if TYPE_CHECKING:  # pragma: no cover
    from grace_bench.finetune.config import FinetuneConfig

SIMCLIP = ("Hossain & Imteaj, Sim-CLIP: Unsupervised Siamese Adversarial Fine-Tuning for Robust "
           "and Semantically-Rich Vision-Language Models, arXiv 2407.14971")
CODE = SIMCLIP + "; code speedlab-git/SimCLIP @2388a87"
TRAIN_PY = CODE + " train/adversarial_training_simclip.py"
SCRIPT = CODE + " README and bash/training/simclip_train.sh"
LOGGED = CODE + " wandb/run-20240716_143340-6neec1nv (SGD, momentum 0.9, lr 1e-3)"
PRESETS = ("readme", "logged")
TARGETS = ("frozen", "current")
INNER_LOSSES = ("l2", "cos")


def simclip_loss(adv_emb: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
    """``-1/2 * mean cos(adv_emb, sg target_emb)`` (both unnormalised, shape (B, D))."""
    return -0.5 * F.cosine_similarity(adv_emb, target_emb.detach(), dim=-1).mean()


def siamese_loss(adv_emb: torch.Tensor, clean_emb: torch.Tensor) -> torch.Tensor:
    """The paper's form ``1/2 D(adv, sg clean) + 1/2 D(clean, sg adv)`` with ``D(p, z) = -mean cos(p, z)``."""
    return simclip_loss(adv_emb, clean_emb) + simclip_loss(clean_emb, adv_emb)


class SimCLIP(FARE):
    name = "sim-clip"
    description = "FARE variant: -cos(adversarial embedding, frozen clean embedding), momentum-PGD attack"
    defaults: dict[str, Hyper] = {
        "eps": Hyper(4 / 255, SCRIPT + " (Sim-CLIP^4; --eps 4)", "l-inf training radius"),
        "pgd_steps": Hyper(10, SCRIPT + " (--iterations_adv 10)", "PGD iterations of the inner maximisation"),
        "pgd_step_size": Hyper(1 / 255, SCRIPT + " (--stepsize_adv 1)", "PGD step size"),
        "pgd_momentum": Hyper(0.9, CODE + " train/pgd_train.py (v <- 0.9 v + sign(g))",
                              "momentum of the inner PGD (0: plain PGD)"),
        "inner_loss": Hyper("l2", SCRIPT + " (--attack_loss l2, FARE's distance)",
                            "objective of the inner attack: l2 (FARE) or cos"),
        "simclip_target": Hyper("frozen", TRAIN_PY + " L68-71, L365-394 (target f_theta0(x), no_grad)",
                                "frozen: code form vs theta0; current: the paper's siamese form"),
        "preset": Hyper("readme", SCRIPT + " (AdamW lr 1e-3, wd 1e-5)",
                        "optimiser: readme (AdamW) or logged (SGD momentum 0.9, the logged run)"),
    }
    trainer_defaults = {
        "lr": Hyper(1e-3, SCRIPT + " (--lr 1e-3)"),
        "weight_decay": Hyper(1e-5, SCRIPT + " (--wd 1e-5)"),
        "batch_size": Hyper(64, SCRIPT + " (--batch_size 64 over 2 GPUs)"),
        "max_steps": Hyper(10000, SCRIPT + " (--steps 10000, about 0.5 ImageNet epoch)"),
        "warmup_steps": Hyper(1400, SCRIPT + " (--warmup 1400)"),
    }

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(hparams)
        for key, allowed in (("preset", PRESETS), ("simclip_target", TARGETS), ("inner_loss", INNER_LOSSES)):
            if self.hparams[key] not in allowed:
                raise UserError(f"method_args.{key}: {self.hparams[key]!r} is not one of {', '.join(allowed)}; "
                                f"pass e.g. --{key.replace('_', '-')} {allowed[0]}")

    def build_optimizer(self, groups: list[dict[str, Any]], config: FinetuneConfig) -> torch.optim.Optimizer:
        if self.hparams["preset"] == "logged":
            return torch.optim.SGD(groups, lr=float(config.lr), momentum=0.9)
        return super().build_optimizer(groups, config)

    def _inner_objective(self, ctx: TrainContext, target: torch.Tensor):
        if self.hparams["inner_loss"] == "l2":
            return self._l2_to(ctx, target)

        def neg_cos(x_in: torch.Tensor) -> torch.Tensor:
            return -F.cosine_similarity(self._embed(ctx, ctx.model, x_in).float(), target, dim=-1)

        return neg_cos

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, _ = batch
        assert ctx.frozen is not None
        with torch.no_grad():
            target = self._embed(ctx, ctx.frozen.model, x).float()
        x_adv = ctx.pgd(ctx.classifier, x, None, step, loss_fn=self._inner_objective(ctx, target),
                        momentum=float(self.hparams["pgd_momentum"]))
        adv = self._embed(ctx, ctx.model, x_adv).float()
        if self.hparams["simclip_target"] == "current":
            loss = siamese_loss(adv, self._embed(ctx, ctx.model, x).float())
        else:
            loss = simclip_loss(adv, target)
        return loss, {"cos_adv": F.cosine_similarity(adv, target, dim=-1).mean().detach()}
