"""AdvCLIP-LoRA (Ghiasvand et al., 2025): LoRA on q/k/v of both towers, trained by gradient descent-ascent.

``min_{A,B} CE(100 * cos(f(x + delta), t_hat), y)`` where ``t_hat`` are the unit embeddings of "a photo of a
{}." from the LoRA-adapted text tower (with gradient) and ``delta`` is a single **universal** pixel-space
perturbation shared by the whole batch: reset to 0 at each epoch, carried from batch to batch, and moved by
``ascent_steps`` raw-gradient ascent steps per batch, ``delta <- clip(delta + eta_t * grad, -eps, eps)`` with
the official step-size schedule ``eta_t`` (``advclip_step_size``). The descent step uses the loss at the last
``delta``. ``perturbation=per_sample_pgd`` replaces the universal delta by per-sample PGD (LoRA-TeCoA).

grace-bench resolutions of the official code: delta lives in [0, 1] pixel space (the code's lives in
normalised space) and ``x + delta`` is clamped to [0, 1] per image; image embeddings are normalised in every
pass (the code normalises only the first). Evaluate only under grace-bench's pixel-space protocol (the official
evaluation clamps normalised images to [0, 1], not a valid l-inf threat model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.finetune.methods.base import Batch, Hyper, Method, TrainContext

if TYPE_CHECKING:  # pragma: no cover
    from grace_bench.finetune.config import FinetuneConfig

ADVCLIP = ("Ghiasvand et al., Few-Shot Adversarial Low-Rank Fine-Tuning of Vision-Language Models "
           "(AdvCLIP-LoRA), arXiv 2505.15130")
CODE = ADVCLIP + "; code sajjad-ucsb/AdvCLIP-LoRA @7b84015"
LORA_PY = CODE + " lora.py"
SCRIPT = CODE + " scripts/few-shot.sh"
RUN_UTILS = CODE + " run_utils.py L37-42 (--encoder both --position all --params q k v)"
TEMPLATE = "a photo of a {}."
PERTURBATIONS = ("universal", "per_sample_pgd")
LOGIT_SCALE = 100.0


def advclip_step_size(delta_norm: float | torch.Tensor, step: int, *, base: float = 0.05,
                      warm_steps: int = 300) -> float | torch.Tensor:
    """The official ascent step size: ``base * [1/||delta|| + (1 - 1/||delta||) / (warm - t)]`` while ``t < warm``,
    else ``base`` (``1/||delta||`` uses ``||delta|| + 1e-30``, so the first step from 0 saturates the clip)."""
    if step >= warm_steps:
        return base
    inverse = 1.0 / (delta_norm + 1e-30)
    return base * (inverse + (1.0 - inverse) / (warm_steps - step))


class AdvCLIPLoRA(Method):
    name = "advclip-lora"
    description = "LoRA on q/k/v of both towers; CE on a universal perturbation moved by gradient ascent"
    towers = ("vision", "text")
    template_kind = "single"
    defaults: dict[str, Hyper] = {
        "eps": Hyper(1 / 255, SCRIPT + " (--epsilon_train 1, in 1/255 units; here in pixel space)",
                     "l-inf radius of the training perturbation (pixel space)"),
        "ascent_steps": Hyper(2, SCRIPT + " (--m 2; the argparse default is 1)", "ascent steps on delta per batch"),
        "ascent_lr": Hyper(0.05, LORA_PY + " L173-179 (step_size *= 0.05)", "base ascent step size of eta_t"),
        "ascent_warm_steps": Hyper(300, LORA_PY + " L173-177 (count_iters < 300)",
                                   "global steps over which eta_t anneals from 1/||delta|| to 1"),
        "perturbation": Hyper("universal", LORA_PY + " L150-193 (one delta for the batch)",
                              "universal (the method) or per_sample_pgd (LoRA-TeCoA)"),
        "pgd_steps": Hyper(2, "grace-bench: per_sample_pgd only, TeCoA's 2 steps (Mao et al., ICLR 2023)",
                           "PGD iterations (perturbation=per_sample_pgd)"),
        "pgd_step_size": Hyper(1 / 255, "grace-bench: per_sample_pgd only, TeCoA's step (Mao et al., ICLR 2023)",
                               "PGD step size (perturbation=per_sample_pgd)"),
        "min_lr": Hyper(1e-6, LORA_PY + " L118 (CosineAnnealingLR eta_min=1e-6)", "end of the cosine schedule"),
    }
    trainer_defaults = {
        "lr": Hyper(2e-4, SCRIPT + " (--lr 2e-4)"),
        "weight_decay": Hyper(1e-2, LORA_PY + " L117 (AdamW weight_decay=1e-2)"),
        "batch_size": Hyper(32, SCRIPT + " (--batch_size 32)"),
        "epochs": Hyper(10.0, ADVCLIP + "; grace-bench uses GRACE's epoch budget in place of 500*k few-shot steps"),
        "warmup_steps": Hyper(0, LORA_PY + " L118 (cosine annealing, no warmup)"),
        "lora_rank": Hyper(2, RUN_UTILS + " (--r 2)"),
        "lora_alpha": Hyper(1.0, RUN_UTILS + " (--alpha 1)"),
        "lora_dropout": Hyper(0.25, RUN_UTILS + " (--dropout_rate 0.25, on the LoRA input)"),
        "lora_targets": Hyper(["attn_in"], RUN_UTILS + "; OpenCLIP packs q/k/v in attn.in_proj_weight"),
        "lora_towers": Hyper(["vision", "text"], RUN_UTILS + " (--encoder both)"),
        "lora_split_qkv": Hyper(True, RUN_UTILS + " (separate q, k, v adapters)"),
        "lora_scaling": Hyper("sqrt", CODE + " loralib/layers.py L42, L67-68 (scaling = alpha / sqrt(r))"),
    }

    def __init__(self, hparams: dict[str, Any] | None = None) -> None:
        super().__init__(hparams)
        if self.hparams["perturbation"] not in PERTURBATIONS:
            raise UserError(f"method_args.perturbation: {self.hparams['perturbation']!r} is not one of "
                            f"{', '.join(PERTURBATIONS)}; pass e.g. --perturbation universal")
        if int(self.hparams["ascent_steps"]) < 0:
            raise UserError("method_args.ascent_steps must be >= 0; pass e.g. --ascent-steps 2")
        self.delta: torch.Tensor | None = None
        self.delta_epoch = -1
        self._prompt_tokens: torch.Tensor | None = None  # the class prompts, tokenised once

    def train_templates(self, suite_templates: list[str]) -> list[str]:
        return [TEMPLATE]  # imagenet.py L188 (and every CoOp dataset's first template)

    def min_lr_factor(self, config: FinetuneConfig) -> float:
        return min(1.0, float(self.hparams["min_lr"]) / float(config.lr))

    def text_features(self, ctx: TrainContext) -> torch.Tensor:
        """(C, D) unit class embeddings from the adapted text tower, with gradient (train-mode LoRA dropout)."""
        if self._prompt_tokens is None:
            self._prompt_tokens = ctx.clip.tokenizer([TEMPLATE.format(c) for c in ctx.classnames]).to(ctx.device)
        return F.normalize(ctx.model.encode_text(self._prompt_tokens).float(), dim=-1)

    def logits(self, ctx: TrainContext, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``100 * cos(f(x), t_hat)`` for images in [0, 1]."""
        clf = ctx.classifier
        image = F.normalize(ctx.model.encode_image((x - clf.mean) / clf.std).float(), dim=-1)
        return LOGIT_SCALE * image @ text.T

    def universal_delta(self, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor,
                        step: int) -> torch.Tensor:
        """Advance the carried universal delta by ``ascent_steps`` raw-gradient steps on this batch; return it."""
        epoch = step // max(1, ctx.steps_per_epoch)
        if self.delta is None or self.delta_epoch != epoch or self.delta.shape != x.shape[1:]:
            self.delta, self.delta_epoch = torch.zeros_like(x[0]), epoch
        eps = float(self.hparams["eps"])
        delta = self.delta.to(x.device)
        text = text.detach()
        with ctx.no_param_grads():
            for _ in range(int(self.hparams["ascent_steps"])):
                delta = delta.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(self.logits(ctx, (x + delta).clamp(0, 1), text), y)
                    (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    eta = advclip_step_size(torch.linalg.vector_norm(delta), step,
                                            base=float(self.hparams["ascent_lr"]),
                                            warm_steps=int(self.hparams["ascent_warm_steps"]))
                    delta = (delta + eta * grad).clamp(-eps, eps)
        self.delta = delta.detach()
        return self.delta

    def loss(self, ctx: TrainContext, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        text = self.text_features(ctx)
        if self.hparams["perturbation"] == "universal":
            x_adv = (x + self.universal_delta(ctx, x, y, text, step)).clamp(0, 1)
        else:
            frozen_text = text.detach()
            x_adv = ctx.pgd(ctx.classifier, x, y, step, loss_fn=lambda xa: F.cross_entropy(
                self.logits(ctx, xa, frozen_text), y, reduction="none"))
        logits = self.logits(ctx, x_adv, text)
        loss = F.cross_entropy(logits, y)
        logs = {"adv_acc": (logits.argmax(dim=1) == y).float().mean().detach()}
        if self.delta is not None and self.hparams["perturbation"] == "universal":
            logs["delta_linf"] = self.delta.abs().max().detach()
        return loss, logs

    def state_dict(self) -> dict[str, Any]:
        if self.delta is None:
            return {}
        return {"delta": self.delta.detach().cpu(), "delta_epoch": int(self.delta_epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "delta" in state:
            self.delta = torch.as_tensor(state["delta"]).float()
            self.delta_epoch = int(state["delta_epoch"])
