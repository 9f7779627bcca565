"""``features``: CKA to the reference, Gram drift, class-centroid cosine and ΔLID under OOD and PGD shifts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grace_bench.geometry.config import DataConfig, setting
from grace_bench.geometry.registry import register


@dataclass
class FeatureConfig(DataConfig):
    """Settings of the feature-space diagnostics (``geometry.features``)."""

    REF = "optional"

    n: int = setting(256, "size of the fixed data subset (default 256)", minimum=1)
    ood: list[str] | None = setting(None, "OOD datasets (default: every 'ood' dataset of the suite)", list_of=str)
    eps: str = setting("4/255", "L-inf PGD budget of the adversarial inputs (default 4/255)")
    pgd_steps: int = setting(10, "PGD steps of the adversarial inputs (default 10)", minimum=1)
    pgd_step_size: str = setting("1/255", "PGD step size (default 1/255)")
    k: int = setting(20, "neighbours of the LID estimate", minimum=1)
    pool: str = setting("auto", "token pooling of layer features", choices=("auto", "cls", "mean"))


FEATURE_DEFINITIONS = {
    "cka": "linear CKA; minibatch = unbiased HSIC summed over batches (Nguyen et al. 2021); layers = pooled "
           "resblock tokens (CLS, or mean for avg-pool towers) plus the final unit embedding",
    "gram_drift": "||K~ - K~0||_F / ||K~0||_F, centred linear Grams of unit embeddings of the same inputs",
    "centroid_cosine": "mean over classes of cos(mean ID embedding, mean shifted embedding) of that class",
    "lid": "MLE with k nearest clean ID embeddings (Euclidean); delta = mean LID(shifted) - mean LID(clean)",
}


def _embed(clf, batches, device):
    import torch

    feats, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            feats.append(clf.image_features(x.to(device)).float().cpu())
            labels.append(y.cpu())
    return torch.cat(feats), torch.cat(labels)


def _adversarial(clf, batches, cfg: FeatureConfig, device) -> list:
    import torch

    from grace_bench.attacks.pgd import pgd_attack

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    out = []
    for x, y in batches:
        x_adv = pgd_attack(clf, x.to(device), y.to(device), eps=cfg.eps, steps=cfg.pgd_steps,
                           step_size=cfg.pgd_step_size, random_start=True, generator=gen)
        out.append((x_adv.cpu(), y))
    return out


def _model_side(clf, id_b, ood: dict, cfg: FeatureConfig, device, *, layers: bool, progress: bool) -> dict:
    """Every forward pass the feature metrics need from one model, each done once.

    ``layers``: collect the pooled resblock features of the ID images too (for layer-wise CKA); their
    ``embedding`` entry is the ID embedding, so the ID images pass through the model once either way.
    """
    import torch

    from grace_bench.geometry.features import layer_features

    if layers:
        feats = layer_features(clf, id_b, pool=cfg.pool, progress=progress)
        f_id, y_id = feats["embedding"], torch.cat([y.cpu() for _, y in id_b])
    else:
        feats = None
        f_id, y_id = _embed(clf, id_b, device)
    adv = _adversarial(clf, id_b, cfg, device)
    f_adv, y_adv = _embed(clf, adv, device)
    return {"layers": feats, "id": (f_id, y_id), "adv": (f_adv, y_adv),
            "ood": {name: _embed(clf, batches, device) for name, (batches, _) in ood.items()}}


def _domain_metrics(side: dict, ood: dict, cfg: FeatureConfig) -> tuple[dict, dict]:
    import numpy as np
    import torch

    from grace_bench.geometry.features import centroid_cosine, delta_lid

    f_id, y_id = side["id"]
    f_adv, y_adv = side["adv"]
    out: dict[str, Any] = {"centroid_cosine": {"id_to_ood": {}, "id_to_adv": None}, "lid": {"ood": {}}}
    for name, (_, subset) in ood.items():
        f, y = side["ood"][name]
        if subset is not None:
            y = torch.as_tensor(subset)[y]
        out["centroid_cosine"]["id_to_ood"][name] = centroid_cosine(f_id, y_id, f, y)
        out["lid"]["ood"][name] = delta_lid(f_id, f, k=cfg.k)
    out["centroid_cosine"]["id_to_adv"] = centroid_cosine(f_id, y_id, f_adv, y_adv)
    out["lid"]["adv"] = delta_lid(f_id, f_adv, k=cfg.k)
    cc = out["centroid_cosine"]
    cc["id_to_ood_mean"] = float(np.mean([v["mean"] for v in cc["id_to_ood"].values()])) if cc["id_to_ood"] else None
    out["lid"]["clean"] = out["lid"]["adv"]["lid_clean"]
    out["lid"]["delta_ood_mean"] = (float(np.mean([v["delta"] for v in out["lid"]["ood"].values()]))
                                    if out["lid"]["ood"] else None)
    out["lid"]["delta_adv"] = out["lid"]["adv"]["delta"]
    return out, {"embeddings_id": f_id.numpy(), "labels_id": y_id.numpy(), "embeddings_adv": f_adv.numpy()}


def _same_model(clip, ref) -> bool:
    """True when the reference is the checkpoint itself (same weights and preprocessing): reuse its results."""
    return (ref.fingerprint() == clip.fingerprint() and ref.arch == clip.arch
            and tuple(ref.mean) == tuple(clip.mean) and tuple(ref.std) == tuple(clip.std))


# The reference's side of the last features job: (key, (side, metrics)). A study compares every checkpoint to the
# same reference on the same subsets with the same seeds, so a worker process computes it once.
_last_reference: list[tuple[str, tuple[dict, dict]]] = []


def _reference_key(ref, id_batches, ood: dict, cfg: FeatureConfig, device) -> str:
    """Everything the reference's forward passes, PGD inputs and metrics depend on: its weights, the images
    themselves (they carry the checkpoint's preprocessing), the settings and the device."""
    import dataclasses
    import hashlib
    import json

    import torch

    digest = hashlib.sha256()
    for name, (batches, subset) in [("id", (id_batches, None)), *sorted(ood.items())]:
        digest.update(f"{name}:{subset}".encode())
        for x, y in batches:
            for t in (x, y):
                digest.update(str((t.dtype, tuple(t.shape))).encode())
                digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return json.dumps({"ref": [ref.fingerprint(), ref.arch, list(ref.mean), list(ref.std)], "data": digest.hexdigest(),
                       "config": dataclasses.asdict(cfg), "device": str(device)}, sort_keys=True, default=str)


def _reference_side(ref, suite, spec, id_batches, ood: dict, cfg: FeatureConfig, device,
                    progress: bool) -> tuple[dict, dict]:
    """The reference model's side and metrics, reused while the reference, data and settings stay the same (the
    numbers are those of a fresh computation: the PGD generator is seeded from the config on every call)."""
    import copy

    from grace_bench.eval.context import classifier_for

    key = _reference_key(ref, id_batches, ood, cfg, device)
    if not _last_reference or _last_reference[0][0] != key:
        ref_clf = classifier_for(ref, suite, spec, device=device, progress=progress).eval()
        side = _model_side(ref_clf, id_batches, ood, cfg, device, layers=True, progress=progress)
        metrics, _ = _domain_metrics(side, ood, cfg)
        _last_reference[:] = [(key, (side, metrics))]
    side, metrics = _last_reference[0][1]
    return side, copy.deepcopy(metrics)


def run_features(inp) -> tuple[dict, dict]:
    import copy
    from pathlib import Path

    from grace_bench.data.suites import DataContext
    from grace_bench.eval.context import classifier_for
    from grace_bench.geometry.features import gram_drift, layerwise_cka_from_features, linear_cka
    from grace_bench.geometry.losses import fixed_subset

    cfg: FeatureConfig = inp.config
    clip, ref, device, progress = inp.clip, inp.ref, inp.device, inp.progress
    suite, spec, id_batches = inp.data.suite, inp.data.spec, inp.data.batches
    clf = classifier_for(clip, suite, spec, device=device, progress=progress).eval()
    ctx = DataContext(root=Path(cfg.data_root) if cfg.data_root else None, preprocess=clip.preprocess,
                      image_size=clip.image_size)
    ood_specs = [suite.dataset(n) for n in cfg.ood] if cfg.ood else suite.by_role("ood")
    ood = {s.name: (fixed_subset(s.load(ctx), cfg.n, cfg.batch_size, seed=cfg.seed), s.class_subset)
           for s in ood_specs}
    side = _model_side(clf, id_batches, ood, cfg, device, layers=ref is not None, progress=progress)
    model_metrics, arrays = _domain_metrics(side, ood, cfg)
    payload: dict[str, Any] = {"data": {**inp.data.info,
                                        "ood": {k: sum(len(y) for _, y in b) for k, (b, _) in ood.items()},
                                        "adversarial": {"attack": "pgd", "eps": cfg.eps, "steps": cfg.pgd_steps,
                                                        "step_size": cfg.pgd_step_size, "random_start": True,
                                                        "against": "each model attacks itself"}},
                               **model_metrics,
                               "definitions": FEATURE_DEFINITIONS}
    if ref is not None:
        same = _same_model(clip, ref)
        if same:  # identical weights, data and seeds: every reference number equals the checkpoint's
            ref_side, ref_metrics = side, copy.deepcopy(model_metrics)
        else:
            ref_side, ref_metrics = _reference_side(ref, suite, spec, id_batches, ood, cfg, device, progress)
        names_x, names_y, grid = layerwise_cka_from_features(side["layers"], ref_side["layers"],
                                                             [len(y) for _, y in id_batches])
        f_id, r_id = side["id"][0], ref_side["id"][0]
        drift = {"id": gram_drift(f_id, r_id)}
        for name in ood:
            drift[name] = gram_drift(side["ood"][name][0], ref_side["ood"][name][0])
        payload.update(
            ref={"spec": ref.spec, "fingerprint": ref.fingerprint(), "arch": ref.arch}, reference_is_checkpoint=same,
            layer_names=names_x, ref_layer_names=names_y, cka_to_ref=float(grid[-1, -1]),
            cka={"minibatch_linear": float(grid[-1, -1]), "linear": linear_cka(f_id, r_id),
                 "linear_debiased": linear_cka(f_id, r_id, debiased=True)},
            cka_kind="minibatch linear CKA (unbiased HSIC), final embedding",
            gram_drift=drift, reference_metrics=ref_metrics,
        )
        arrays["cka_layers"] = grid
        arrays["ref_embeddings_id"] = r_id.numpy()
    return payload, arrays


def headline(record: dict) -> str:
    if record.get("cka_to_ref") is None:
        return "feature diagnostics"
    return f"CKA to reference {record['cka_to_ref']:.4f}"


register("features", FeatureConfig, run_features, order=4, headline=headline,
         help="CKA to the reference, Gram drift, class-centroid cosine, ΔLID",
         study={"micro": {"n": 256}, "quick": {"n": 48, "pgd_steps": 2, "pgd_step_size": "2/255"}, "paper": {}})
