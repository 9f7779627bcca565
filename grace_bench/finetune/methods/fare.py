"""FARE (Schlarmann et al., ICML 2024): unsupervised adversarial fine-tuning of the vision embedding.

Loss: ``||phi_theta(x_adv) - phi_theta0(x)||_2^2`` summed over embedding dimensions and averaged over the
batch, where ``phi`` is the (unnormalised, projected) image embedding and theta0 the frozen initial model.
The inner maximisation (PGD) maximises the same per-sample loss. Only the vision tower trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext

FARE = "Schlarmann et al., Robust CLIP: Unsupervised Adversarial Fine-Tuning of Vision Embeddings (FARE), ICML 2024"


class FARE(Method):
    name = "fare"
    description = "squared-L2 distance of the adversarial embedding to the frozen clean embedding"
    towers = ("vision",)
    needs_frozen = True
    template_kind = "single"
    defaults: dict[str, Hyper] = {
        "eps": Hyper(4 / 255, FARE + " (FARE^4; also matches the GRACE threat model)", "l-inf training radius"),
        "pgd_steps": Hyper(10, FARE + " (10-step PGD)", "PGD iterations of the inner maximisation"),
        "pgd_step_size": Hyper(1 / 255, FARE + " (--stepsize_adv 1)", "PGD step size"),
        "normalize_embeddings": Hyper(False, FARE + " (--output_normalize False)", "L2-normalise phi first"),
        "clean_weight": Hyper(0.0, FARE + " (--clean_weight 0)", "weight of the clean-image term (1-w on adv)"),
    }
    trainer_defaults = {
        "lr": Hyper(1e-5, FARE),
        "weight_decay": Hyper(1e-4, FARE),
        "batch_size": Hyper(128, FARE),
        "max_steps": Hyper(20000, FARE + " (20k steps, about 2 ImageNet epochs)"),
        "warmup_steps": Hyper(1400, FARE + " (7% of the steps)"),
    }

    def _embed(self, ctx: TrainContext, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        clf = ctx.classifier
        emb = model.encode_image((x - clf.mean) / clf.std)
        return F.normalize(emb, dim=-1) if self.hparams.get("normalize_embeddings", False) else emb

    def _l2_to(self, ctx: TrainContext, target: torch.Tensor):
        """Per-sample ``||phi_theta(x_in) - target||^2`` as a function of ``x_in`` (FARE's loss and attack)."""

        def per_sample(x_in: torch.Tensor) -> torch.Tensor:
            return (self._embed(ctx, ctx.model, x_in).float() - target).pow(2).sum(dim=1)

        return per_sample

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, _ = batch
        assert ctx.frozen is not None
        with torch.no_grad():
            target = self._embed(ctx, ctx.frozen.model, x).float()

        per_sample = self._l2_to(ctx, target)
        x_adv = ctx.pgd(ctx.classifier, x, None, step, loss_fn=per_sample)
        adv = per_sample(x_adv).mean()
        w = float(self.hparams["clean_weight"])
        loss = adv if w == 0 else (1 - w) * adv + w * per_sample(x).mean()
        return loss, {"fare_adv": adv.detach()}
