"""micro-CLIP: a tiny OpenCLIP ViT pretrained contrastively on digit renditions.

The pretrained weights ship with the package (``SHIPPED_WEIGHTS``); ``load_micro_clip`` (spec ``micro``)
loads them, so every machine evaluates and fine-tunes the same model. ``grace-bench micro pretrain`` reruns
the recipe into the cache folder; the result depends on the CPU's instruction set, the thread count and the
library versions, so it usually differs from the shipped file. Load a rebuild as ``micro-clip:/path/file``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from grace_bench.models.clip_model import CONFIG_DIR, ClipModel, state_dict_fingerprint
from grace_bench.utils.atomic import atomic_save_safetensors, atomic_write_json
from grace_bench.utils.cache import cache_dir

__all__ = ["MICRO_ARCH", "SHIPPED_WEIGHTS", "PretrainRecipe", "cache_dir", "load_micro_clip", "pretrain_micro_clip",
           "rebuild_micro_weights", "rebuilt_weights_path", "weights_fingerprint"]

MICRO_ARCH = "micro-clip"

# Captions seen in pretraining: varied phrasings, some shared with the eval templates (as web
# captions share phrasing with CLIP's ImageNet prompts), filled with the class name.
PRETRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {}.",
    "a picture of the number {}.",
    "a handwritten {}.",
    "the number {}.",
    "a colourful {}.",
    "an image of a {}.",
    "a drawing of the digit {}.",
    "{}.",
)


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pretrained micro-CLIP weights."""

    text_steps: int = 60
    text_lr: float = 1e-3
    image_steps: int = 600
    image_lr: float = 3e-3
    target_val_accuracy: float = 0.88
    check_every: int = 5
    batch_size: int = 128
    weight_decay: float = 0.1
    warmup: int = 10
    renditions_per_image: int = 4
    seed: int = 0
    data_version: str = "digits-v2"

    def key(self) -> str:
        cfg = (CONFIG_DIR / f"{MICRO_ARCH}.json").read_text()
        blob = json.dumps({"recipe": asdict(self), "config": cfg, "templates": PRETRAIN_TEMPLATES}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def rebuilt_weights_path(recipe: PretrainRecipe | None = None) -> Path:
    """Where ``grace-bench micro pretrain`` writes its rebuild (named by the recipe's hash) in the cache folder."""
    recipe = recipe or PretrainRecipe()
    return cache_dir() / f"micro-clip-rebuilt-{recipe.key()}.safetensors"


def _soft_contrastive(logits: torch.Tensor, row_labels: torch.Tensor, col_labels: torch.Tensor,
                      mask_diagonal: bool = False) -> torch.Tensor:
    """Cross-entropy whose targets spread evenly over all columns of the same class (label-aware InfoNCE)."""
    same = (row_labels[:, None] == col_labels[None, :]).float()
    if mask_diagonal:
        eye = torch.eye(len(row_labels), dtype=torch.bool)
        same = same.masked_fill(eye, 0.0)
        logits = logits.masked_fill(eye, -1e9)
    target = same / same.sum(1, keepdim=True)
    return torch.sum(-target * logits.log_softmax(1), 1).mean()


def pretrain_micro_clip(recipe: PretrainRecipe | None = None, *, progress: bool = True,
                        monitor=None) -> dict:
    """Pretrain micro-CLIP contrastively on caption and rendition/caption pairs (LiT-style, two phases).

    From a random start a tiny CLIP trained jointly sits on a collapsed fixed point for hundreds of steps
    (all caption embeddings nearly equal, cosine ~0.95 between class names; measured here), so:

    1. ``text_steps``: the text tower alone learns a caption space in which the captions of one class
       (every template) are close and different classes are apart (label-aware InfoNCE over captions).
    2. up to ``image_steps``: with the text tower locked, the image tower learns to match renditions of
       the train digits to their captions (image-caption InfoNCE with same-class captions as
       positives), at a constant learning rate after warm-up. It stops as soon as zero-shot accuracy
       on the *val* split (checked every ``check_every`` steps, the 10 evaluation templates) reaches
       ``target_val_accuracy``: like real CLIP on ImageNet, the model is left with room for
       fine-tuning to improve it.

    ``monitor(step, model)`` is called every 50 image steps if given. Progress shows one bar per phase; the
    image phase's bar ends at the step where the target was reached.
    """
    from tqdm.auto import tqdm

    from grace_bench.data.micro import MICRO_CLASSNAMES, MICRO_TEMPLATES, _split, micro_dataset, pretrain_renditions
    from grace_bench.models.loading import build_clip_model, no_random_init_warning
    from grace_bench.models.zero_shot import build_zero_shot_head

    recipe = recipe or PretrainRecipe()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    with no_random_init_warning():  # a random start is the point of pretraining
        clip = build_clip_model(MICRO_ARCH)
    model = clip.model.train()
    start = time.perf_counter()
    n_t = len(PRETRAIN_TEMPLATES)
    captions = [t.format(c) for c in MICRO_CLASSNAMES for t in PRETRAIN_TEMPLATES]
    tokens = clip.tokenizer(captions)
    caption_labels = torch.arange(len(MICRO_CLASSNAMES)).repeat_interleave(n_t)
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    image_params = [p for n, p in model.named_parameters() if n.startswith("visual.")]

    def schedule(opt, step, total, lr, cosine=True):
        warm = min(1.0, (step + 1) / recipe.warmup)
        for g in opt.param_groups:
            g["lr"] = lr * warm * (0.5 * (1 + np.cos(np.pi * step / total)) if cosine else 1.0)

    opt = torch.optim.AdamW(text_params, lr=recipe.text_lr, weight_decay=recipe.weight_decay)
    bar = tqdm(total=recipe.text_steps, desc="micro-CLIP 1/2: text tower", disable=not progress)
    for step in range(recipe.text_steps):
        schedule(opt, step, recipe.text_steps, recipe.text_lr)
        f = F.normalize(model.encode_text(tokens), dim=-1)
        loss = _soft_contrastive(model.logit_scale.exp() * f @ f.T, caption_labels, caption_labels, True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    with torch.no_grad():
        text_features = F.normalize(model.encode_text(tokens), dim=-1).view(len(MICRO_CLASSNAMES), n_t, -1)
        eval_head = build_zero_shot_head(model, clip.tokenizer, MICRO_CLASSNAMES, MICRO_TEMPLATES)
    model.train()
    val_x, val_y = micro_dataset("micro", "val").tensors
    val_x = (val_x - torch.tensor(clip.mean).view(1, 3, 1, 1)) / torch.tensor(clip.std).view(1, 3, 1, 1)
    val_acc = float("nan")

    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    x8, y = _split("train")
    pool_labels = torch.from_numpy(np.tile(y, recipe.renditions_per_image))
    pool = torch.from_numpy(pretrain_renditions(np.tile(x8, (recipe.renditions_per_image, 1, 1)), rng))
    pool = (pool - mean) / std
    opt = torch.optim.AdamW(image_params, lr=recipe.image_lr, weight_decay=recipe.weight_decay)
    losses: list[float] = []
    bar = tqdm(total=recipe.image_steps, disable=not progress,
               desc=f"micro-CLIP 2/2: image tower, until val acc >= {recipe.target_val_accuracy:.2f}")
    for step in range(recipe.image_steps):
        schedule(opt, step, recipe.image_steps, recipe.image_lr, cosine=False)
        idx = torch.from_numpy(rng.integers(0, len(pool_labels), recipe.batch_size))
        labels = pool_labels[idx]
        caption = text_features[labels, torch.from_numpy(rng.integers(0, n_t, len(idx)))]
        img_f = F.normalize(model.encode_image(pool[idx]), dim=-1)
        logits = model.logit_scale.exp().detach() * img_f @ caption.T
        loss = 0.5 * (_soft_contrastive(logits, labels, labels) + _soft_contrastive(logits.T, labels, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", val=f"{val_acc:.3f}")
        if monitor is not None and (step + 1) % 50 == 0:
            model.eval()
            monitor(step + 1, model)
            model.train()
        if (step + 1) % recipe.check_every == 0:
            model.eval()
            with torch.no_grad():
                val_acc = (F.normalize(model.encode_image(val_x), dim=-1) @ eval_head).argmax(1).eq(val_y)
                val_acc = val_acc.float().mean().item()
            model.train()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", val=f"{val_acc:.3f}")
            if val_acc >= recipe.target_val_accuracy:
                break
    if step + 1 < recipe.image_steps:  # stopped early at the target: the bar ends where training ended
        bar.total = step + 1
        bar.set_description(f"micro-CLIP 2/2: image tower, val acc {val_acc:.3f} reached at step {step + 1}")
    bar.close()
    model.eval()
    return {
        "state_dict": model.state_dict(),
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
        "seconds": time.perf_counter() - start,
        "recipe": asdict(recipe),
        "image_steps_run": step + 1,
        "val_accuracy": val_acc,
    }


def rebuild_micro_weights(*, progress: bool = True) -> dict[str, Any]:
    """Rerun the pretraining recipe and write the weights (and a JSON sidecar) into the cache folder.

    Returns ``path``, ``fingerprint`` and the run's summary. The shipped weights are never touched.
    """
    recipe = PretrainRecipe()
    path = rebuilt_weights_path(recipe)
    out = pretrain_micro_clip(recipe, progress=progress)
    meta = {"arch": MICRO_ARCH, "recipe_key": recipe.key(), "final_loss": f"{out['final_loss']:.6f}"}
    atomic_save_safetensors(path, out["state_dict"], metadata=meta)
    fingerprint = state_dict_fingerprint(out["state_dict"])
    summary = {**meta, "fingerprint": fingerprint, "recipe": out["recipe"], "seconds": out["seconds"],
               "image_steps_run": out["image_steps_run"], "val_accuracy": out["val_accuracy"]}
    atomic_write_json(path.with_suffix(".json"), summary)
    return {"path": path, **summary}


SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "micro-clip.safetensors"


@lru_cache(maxsize=4)
def weights_fingerprint(path: str | Path = SHIPPED_WEIGHTS) -> str:
    """``ClipModel.fingerprint()`` of the model a micro-CLIP weights file loads into (without building it)."""
    from safetensors.torch import load_file

    return state_dict_fingerprint(load_file(str(path)))


def load_micro_clip() -> ClipModel:
    """The shipped, pretrained micro-CLIP as a ``ClipModel`` (identical weights on every machine)."""
    from safetensors.torch import load_file

    from grace_bench.models.loading import build_clip_model

    path = SHIPPED_WEIGHTS
    clip = build_clip_model(MICRO_ARCH, load_file(str(path)), spec="micro")
    clip.info["weights"] = str(path)
    clip.info["format"] = "micro"
    return clip
