"""TGA-ZSR (Yu et al., NeurIPS 2024) and Comp-TGA (TPAMI 2026): adversarial CE plus text-guided attention alignment.

``L = CE(f_theta(x_adv), y) + alpha * mean||A_theta(x_adv) - A_theta0(x)|| + beta * mean||A_theta(x) - A_theta0(x)||``

``A(x)`` is the text-guided attention map of the true class's training prompt
(``grace_bench.models.attention_maps.text_attention_map``); norms are unsquared L2 over the flattened map, and
``A_theta0`` and the text carry no gradient. Comp-TGA replaces each map by ``A(x; t_y) * (1 - A(x; t_not_y))``
with ``t_not_y`` the prompt "This is not a photo of a {}". x_adv is PGD on the CE of the current model (the
attack leaves no gradients on parameters). Only the vision tower trains. Deviations from the official code are
listed in docs/baselines-recent.md.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext
from grace_bench.finetune.methods.tecoa import FARE_ADAMW
from grace_bench.models.attention_maps import (
    NORM_AXES,
    encode_with_tokens,
    map_distance,
    patch_grid,
    text_attention_map,
)

TGA = ("Yu et al., Text-Guided Attention is All You Need for Zero-Shot Robustness in Vision-Language Models "
       "(TGA-ZSR), NeurIPS 2024")
TGA_CODE = TGA + ", code zhyblue424/TGA-ZSR@663fe57"
COMP = "Yu et al., Comp-TGA (TPAMI 2026, arXiv 2603.18598), code zhyblue424/TGA-ZSR@663fe57 Comp-TGA.py"
NOT_TEMPLATE = "This is not a photo of a {}"


class TGAZSR(Method):
    name = "tga-zsr"
    description = "adversarial CE + alignment of text-guided attention maps to the frozen model's clean map"
    towers = ("vision",)
    needs_frozen = True
    template_kind = "single"
    complement = False
    defaults: dict[str, Hyper] = {
        "eps": Hyper(1 / 255, TGA_CODE + " TGA-ZSR.py L45-47 (--train_eps 1)", "l-inf training radius"),
        "pgd_steps": Hyper(2, TGA_CODE + " TGA-ZSR.py L45-47 (--train_numsteps 2)", "PGD iterations"),
        "pgd_step_size": Hyper(1 / 255, TGA_CODE + " TGA-ZSR.py L45-47 (--train_stepsize 1)", "PGD step size"),
        "alpha": Hyper(0.08, TGA_CODE + " TGA-ZSR.py L92 (--Alpha)", "weight of ||A_theta(x_adv) - A_theta0(x)||"),
        "beta": Hyper(0.05, TGA_CODE + " TGA-ZSR.py L93 (--Beta)", "weight of ||A_theta(x) - A_theta0(x)||"),
        "tga_norm_axis": Hyper("token", TGA_CODE + " attention_map.py L8 (norm over dim=1, the token axis)",
                               "normalise tokens over the token axis (official) or per token ('feature')"),
    }
    trainer_defaults = {
        "lr": Hyper(1e-5, FARE_ADAMW + " (TGA-ZSR's code uses SGD, momentum 0.9, lr 1e-4: TGA-ZSR.py L34-42)"),
        "weight_decay": Hyper(0.0, TGA_CODE + " TGA-ZSR.py L34-42 (--weight_decay 0)"),
        "batch_size": Hyper(128, TGA_CODE + " TGA-ZSR.py L34-42 (--batch_size 128)"),
        "epochs": Hyper(10.0, TGA_CODE + " TGA-ZSR.py L34-42 (--epochs 10)"),
        "warmup_steps": Hyper(1000, TGA_CODE + " utils.py L36-50 (1000 linear warmup steps, then cosine)"),
    }

    @classmethod
    def resolve_hparams(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """The base resolution plus a check of ``tga_norm_axis`` (before any run folder is written)."""
        out = super().resolve_hparams(overrides)
        if out["tga_norm_axis"] not in NORM_AXES:
            raise UserError(f"method_args.tga_norm_axis must be one of {', '.join(NORM_AXES)}, got "
                            f"{out['tga_norm_axis']!r}; pass --tga-norm-axis token (official) or feature")
        return out

    _not_head: torch.Tensor | None = None  # Comp-TGA: class embeddings of NOT_TEMPLATE (text tower is frozen)

    def setup(self, ctx: TrainContext) -> None:
        if self.complement:
            self._not_head = ctx.build_head([NOT_TEMPLATE])

    def attention(self, ctx: TrainContext, tokens: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The method's map of each image for its true class (Comp-TGA: times the complement of the 'not' map)."""
        size = tuple(x.shape[-2:])
        grid = patch_grid(ctx.model, size)
        axis = str(self.hparams["tga_norm_axis"])
        text = ctx.classifier.head[:, y].T
        maps = text_attention_map(tokens, text, grid, size, norm_axis=axis)
        if self.complement:
            if self._not_head is None:
                self.setup(ctx)
            assert self._not_head is not None
            maps = maps * (1 - text_attention_map(tokens, self._not_head[:, y].T, grid, size, norm_axis=axis))
        return maps

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        assert ctx.frozen is not None
        clf = ctx.classifier
        x_adv = ctx.pgd(clf, x, y, step)  # CE attack on the current model; leaves no parameter gradients
        with torch.no_grad():
            _, tokens0 = encode_with_tokens(ctx.frozen.model, (x - clf.mean) / clf.std)
            target = self.attention(ctx, tokens0, x, y)
        emb_adv, tokens_adv = encode_with_tokens(ctx.model, (x_adv - clf.mean) / clf.std)
        logits = clf.logits_from_features(F.normalize(emb_adv.float(), dim=-1))
        ce = F.cross_entropy(logits, y)
        _, tokens_clean = encode_with_tokens(ctx.model, (x - clf.mean) / clf.std)
        align_adv = map_distance(self.attention(ctx, tokens_adv, x, y), target)
        align_clean = map_distance(self.attention(ctx, tokens_clean, x, y), target)
        loss = ce + float(self.hparams["alpha"]) * align_adv + float(self.hparams["beta"]) * align_clean
        logs: dict[str, Any] = {"ce_adv": ce.detach(), "tga_adv": align_adv.detach(),
                                "tga_clean": align_clean.detach(),
                                "adv_acc": (logits.argmax(dim=1) == y).float().mean().detach()}
        return loss, logs


class CompTGA(TGAZSR):
    name = "comp-tga"
    description = "TGA-ZSR with complementary maps A(x; t_y) * (1 - A(x; 'not' t_y))"
    complement = True
    defaults: dict[str, Hyper] = {
        **TGAZSR.defaults,
        "alpha": Hyper(0.10, COMP + " L102 (--Alpha)", "weight of ||A_theta(x_adv) - A_theta0(x)||"),
        "beta": Hyper(0.07, COMP + " L103 (--Beta)", "weight of ||A_theta(x) - A_theta0(x)||"),
    }
