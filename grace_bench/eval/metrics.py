"""Accuracy counting and the GRACE paper's aggregates (fractions in [0, 1])."""

from __future__ import annotations

from collections.abc import Mapping
from statistics import mean

import torch

from grace_bench.results.values import harmonic_mean

__all__ = ["AGGREGATE_DEFINITIONS", "aggregates", "harmonic_mean", "topk_correct", "topk_hits"]

AGGREGATE_DEFINITIONS = {
    "id": "top-1 accuracy on the suite's ID dataset",
    "ood_avg": "mean top-1 over the OOD datasets (ImageNet: V2, Sketch, R)",
    "nat_adv": "mean top-1 over the natural-adversarial datasets (ImageNet-A, A-Plus if present)",
    "autoattack": "robust accuracy on the ID adversarial subset under the chosen attack",
    "adv": "mean(autoattack, nat_adv)",
    "hm": "3 / (1/id + 1/ood_avg + 1/adv)",
}


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Per example and k <= num classes (columns in order of ``ks``): is the label among the top-k logits."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == labels[:, None]
    return torch.stack([hit[:, :k].any(dim=1) for k in ks if k <= logits.shape[1]], dim=1)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of examples whose label is among the top-k logits, for each k <= num classes."""
    hits = topk_hits(logits, labels, ks)
    return {k: int(hits[:, i].sum()) for i, k in enumerate(k for k in ks if k <= logits.shape[1])}


def aggregates(per_dataset: Mapping[str, Mapping], adversarial: Mapping[str, Mapping], id_name: str) -> dict:
    """ID, OOD avg, Nat-adv, AutoAttack, Adv and HM from per-dataset clean results and ID robust accuracy.

    Missing pieces give None rather than a made-up number.
    """
    def by_role(role: str) -> list[float]:
        return [r["top1"] for r in per_dataset.values() if r.get("role") == role]

    idv = per_dataset.get(id_name, {}).get("top1")
    ood = by_role("ood")
    nat = by_role("nat-adv")
    ood_avg = mean(ood) if ood else None
    nat_adv = mean(nat) if nat else None
    aa = adversarial.get(id_name, {}).get("robust_acc")
    adv_parts = [v for v in (aa, nat_adv) if v is not None]
    adv = mean(adv_parts) if len(adv_parts) == 2 else None
    hm = harmonic_mean([idv, ood_avg, adv])
    return {"id": idv, "ood_avg": ood_avg, "nat_adv": nat_adv, "autoattack": aa, "adv": adv, "hm": hm}
