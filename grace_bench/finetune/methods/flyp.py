"""FLYP (Goyal et al., CVPR 2023): fine-tune like you pretrain, with CLIP's contrastive loss.

Each image is paired with a caption made from its class name and a prompt template (one of the suite's
templates, drawn per image and step from the run's seeded generator). The symmetric InfoNCE loss over the
batch trains both towers and the logit scale (clamped to ln 100 after each step, as in CLIP). Same-class
pairs count as negatives, as in the original; ``label_mask`` removes them from the denominators instead.
The evaluation head is rebuilt from the trained text tower. Under DDP the loss is computed over the global
batch (features are all-gathered).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext

FLYP = "Goyal et al., Finetune like you pretrain: Improved finetuning of zero-shot vision models (FLYP), CVPR 2023"
MAX_LOGIT_SCALE = math.log(100.0)


class FLYP(Method):
    name = "flyp"
    description = "contrastive image-caption loss over class-prompt captions; both towers train"
    towers = ("vision", "text", "logit")
    template_kind = "suite"
    defaults: dict[str, Hyper] = {
        "label_mask": Hyper(False, FLYP + " (off: same-class pairs are negatives in the original)",
                            "drop same-class off-diagonal pairs from the contrastive denominators"),
    }
    trainer_defaults = {
        "lr": Hyper(1e-5, FLYP + ", ImageNet"),
        "weight_decay": Hyper(0.1, FLYP + ", ImageNet"),
        "batch_size": Hyper(512, FLYP + ", ImageNet"),
        "epochs": Hyper(10.0, FLYP + ", ImageNet"),
        "warmup_steps": Hyper(500, FLYP + ", ImageNet"),
    }

    def captions(self, ctx: TrainContext, y: torch.Tensor, step: int) -> list[str]:
        """One caption per label: a seeded random template filled with the class name.

        The draw is made for the whole global batch and sliced by rank, so DDP and a single process agree.
        """
        templates = ctx.train_templates
        n, world, rank = y.numel(), ctx.dist.world_size, ctx.dist.rank
        g = torch.Generator().manual_seed(int(ctx.config.seed) * 7_654_321 + step * 31)
        pick = torch.randint(len(templates), (n * world,), generator=g)[rank * n:(rank + 1) * n].tolist()
        return [templates[t].format(ctx.classnames[c]) for t, c in zip(pick, y.tolist())]

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        tokens = ctx.clip.tokenizer(self.captions(ctx, y, step)).to(ctx.device)
        img = ctx.classifier.image_features(x)
        txt = F.normalize(ctx.model.encode_text(tokens), dim=-1)
        img_all = ctx.dist.gather_with_local_grad(img)
        txt_all = ctx.dist.gather_with_local_grad(txt)
        y_all = ctx.dist.gather_cat(y)
        world = ctx.dist.world_size
        scale = ctx.model.logit_scale.exp()
        # Every rank computes the same global loss but holds the graph of its own slice only: the loss is scaled by
        # the world size so the trainer's gradient *mean* over ranks equals the full gradient. The logit scale is
        # in every rank's graph in full, so its gradient path is divided by the world size to compensate.
        scale_eff = scale if world == 1 else scale.detach() + (scale - scale.detach()) / world
        loss = contrastive_loss(img_all, txt_all, scale_eff, y_all if self.hparams["label_mask"] else None)
        return loss * world, {"loss": loss.detach(), "logit_scale": scale.detach()}

    def after_step(self, ctx: TrainContext, step: int) -> None:
        with torch.no_grad():
            ctx.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between unit image and text embeddings (row i matches column i).

    With ``labels``, off-diagonal pairs of the same class are masked out of both softmax denominators.
    """
    logits = scale * img.float() @ txt.float().T
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
