"""micro-CLIP: a tiny OpenCLIP ViT pretrained contrastively on digit renditions, cached on disk.

The recipe (config, data, seed, steps) is hashed into the cache file name, so a changed recipe
never reuses a stale cache. ``grace-bench micro pretrain`` rebuilds it explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from grace_bench.models.clip_model import CONFIG_DIR, ClipModel
from grace_bench.models.loading import build_clip_model
from grace_bench.utils.atomic import atomic_save_safetensors, atomic_write_json

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

    steps: int = 400
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 20
    text_frozen_steps: int = 80
    renditions_per_image: int = 6
    seed: int = 0
    data_version: str = "digits-v1"

    def key(self) -> str:
        cfg = (CONFIG_DIR / f"{MICRO_ARCH}.json").read_text()
        blob = json.dumps({"recipe": asdict(self), "config": cfg, "templates": PRETRAIN_TEMPLATES}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where micro-CLIP is cached: $GRACE_BENCH_CACHE, else the XDG user cache dir."""
    env = os.environ.get("GRACE_BENCH_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("grace-bench"))


def micro_weights_path(recipe: PretrainRecipe | None = None) -> Path:
    recipe = recipe or PretrainRecipe()
    return cache_dir() / f"micro-clip-{recipe.key()}.safetensors"


def pretrain_micro_clip(recipe: PretrainRecipe | None = None, *, progress: bool = True,
                        monitor=None) -> dict:
    """Contrastively pretrain micro-CLIP on rendition/caption pairs; returns the state dict and stats.

    Captions of the same class count as positives (soft targets). From a random start both towers
    collapse onto one point (every caption embedding equal), a symmetric fixed point observed here. So
    for the first ``text_frozen_steps`` steps the text tower is held fixed and each class has a single
    caption (its name), giving the image tower ten distinct targets to align to, as in LiT; then both
    towers train on all caption templates. ``monitor(step, model)`` is called every 50 steps if given.
    """
    from tqdm.auto import tqdm

    from grace_bench.data.micro import MICRO_CLASSNAMES, _split, pretrain_renditions

    recipe = recipe or PretrainRecipe()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    clip = build_clip_model(MICRO_ARCH)
    model = clip.model.train()
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    x8, y = _split("train")
    pool_labels = np.tile(y, recipe.renditions_per_image)
    pool = torch.from_numpy(pretrain_renditions(np.tile(x8, (recipe.renditions_per_image, 1, 1)), rng))
    pool = (pool - mean) / std
    captions = [t.format(c) for c in MICRO_CLASSNAMES for t in PRETRAIN_TEMPLATES]
    tokens = clip.tokenizer(captions).view(len(MICRO_CLASSNAMES), len(PRETRAIN_TEMPLATES), -1)
    visual = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    text = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
    opt = torch.optim.AdamW([{"params": visual}, {"params": text}], lr=recipe.lr, weight_decay=recipe.weight_decay)

    def lr_at(step: int, start: int) -> float:
        if step < start:
            return 0.0
        s = step - start
        warm = min(1.0, (s + 1) / recipe.warmup)
        return recipe.lr * warm * 0.5 * (1 + np.cos(np.pi * s / max(1, recipe.steps - start)))

    start = time.perf_counter()
    bar = tqdm(range(recipe.steps), desc="pretrain micro-CLIP", disable=not progress)
    losses: list[float] = []
    for step in bar:
        opt.param_groups[0]["lr"] = lr_at(step, 0)
        opt.param_groups[1]["lr"] = lr_at(step, recipe.text_frozen_steps)
        idx = rng.integers(0, len(pool_labels), recipe.batch_size)
        labels = pool_labels[idx]
        template = rng.integers(0, len(PRETRAIN_TEMPLATES), len(idx))
        if step < recipe.text_frozen_steps:
            template[:] = len(PRETRAIN_TEMPLATES) - 1  # the bare class name
        caption = tokens[torch.from_numpy(labels), torch.from_numpy(template)]
        img_f = F.normalize(model.encode_image(pool[torch.from_numpy(idx)]), dim=-1)
        txt_f = F.normalize(model.encode_text(caption), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        same = torch.from_numpy(labels[:, None] == labels[None, :]).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.log_softmax(0).T, 1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if monitor is not None and (step + 1) % 50 == 0:
            model.eval()
            monitor(step + 1, model)
            model.train()
    model.eval()
    return {
        "state_dict": model.state_dict(),
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": time.perf_counter() - start,
        "recipe": asdict(recipe),
    }


def ensure_micro_weights(*, rebuild: bool = False, progress: bool = True) -> Path:
    """Path of the cached micro-CLIP weights, pretraining them first if missing (or if ``rebuild``)."""
    recipe = PretrainRecipe()
    path = micro_weights_path(recipe)
    if rebuild or not path.exists():
        out = pretrain_micro_clip(recipe, progress=progress)
        meta = {"arch": MICRO_ARCH, "recipe_key": recipe.key(), "final_loss": f"{out['final_loss']:.6f}"}
        atomic_save_safetensors(path, out["state_dict"], metadata=meta)
        atomic_write_json(path.with_suffix(".json"), {**meta, "recipe": out["recipe"], "seconds": out["seconds"]})
    return path


def load_micro_clip(*, progress: bool = True) -> ClipModel:
    """The pretrained micro-CLIP as a ``ClipModel`` (pretrains and caches it on first use)."""
    from safetensors.torch import load_file

    path = ensure_micro_weights(progress=progress)
    clip = build_clip_model(MICRO_ARCH, load_file(str(path)), spec="micro")
    clip.info["weights"] = str(path)
    clip.info["format"] = "micro"
    return clip
