"""Zero-shot head (class embeddings from the checkpoint's own text tower) and the pixel-space classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def build_zero_shot_head(
    model: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]],
    *,
    classes_per_batch: int = 10,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Class embeddings of shape (embed_dim, num_classes).

    Each column is the mean of the L2-normalised embeddings of every template filled with the class
    name, renormalised. Matches ``open_clip.build_zero_shot_classifier`` exactly.
    """
    from tqdm.auto import tqdm

    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    columns = []
    starts = range(0, len(classnames), classes_per_batch)
    for start in tqdm(starts, desc="zero-shot head", disable=not progress, unit="batch"):
        batch = classnames[start : start + classes_per_batch]
        texts = [t.format(c) if isinstance(t, str) else t(c) for c in batch for t in templates]
        tokens = tokenizer(texts).to(device)
        emb = model.encode_text(tokens, normalize=True)
        emb = emb.reshape(len(batch), len(templates), -1).mean(dim=1)
        columns.append(F.normalize(emb, dim=-1).T)
    return torch.cat(columns, dim=1)


class ZeroShotClassifier(nn.Module):
    """Images in [0, 1] -> logits = logit_scale.exp() * cos(image embedding, class embedding).

    Normalisation lives inside, so attacks operate in pixel space. ``class_subset`` (indices into the
    head's columns) projects e.g. 1000 ImageNet classes down to the 200 of ImageNet-R/A.
    """

    def __init__(
        self,
        model: nn.Module,
        head: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        class_subset: torch.Tensor | Sequence[int] | None = None,
        logit_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("head", head.detach().clone().float())
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        subset = None if class_subset is None else torch.as_tensor(class_subset, dtype=torch.long)
        self.register_buffer("class_subset", subset)
        self.fixed_logit_scale = logit_scale

    @property
    def num_classes(self) -> int:
        return int(self.head.shape[1] if self.class_subset is None else self.class_subset.numel())

    def with_subset(self, class_subset: torch.Tensor | Sequence[int] | None) -> ZeroShotClassifier:
        """A classifier sharing this one's model and head but projecting onto ``class_subset``."""
        return ZeroShotClassifier(
            self.model, self.head, self.mean.flatten().tolist(), self.std.flatten().tolist(),
            class_subset=class_subset, logit_scale=self.fixed_logit_scale,
        ).to(self.head.device)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-normalised image embeddings of pixel-space images ``x`` in [0, 1]."""
        x = (x - self.mean) / self.std
        return F.normalize(self.model.encode_image(x), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        if self.fixed_logit_scale is not None:
            return torch.tensor(self.fixed_logit_scale, device=self.head.device)
        return self.model.logit_scale.exp()

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from unit-normalised image embeddings (applies the class subset)."""
        head = self.head.to(features.dtype)
        if self.class_subset is not None:
            head = head[:, self.class_subset]
        return self.logit_scale().to(features.dtype) * features @ head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.image_features(x))
