"""Feature-space diagnostics: CKA (linear, debiased, RBF, minibatch), layer hooks, Gram drift, centroids, LID.

Definitions
- CKA (Kornblith et al. 2019): ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with centred Grams;
  ``debiased`` uses the unbiased HSIC estimator (Song et al. 2012). RBF kernel:
  ``exp(-||x_i - x_j||^2 / (2 sigma^2))`` with ``sigma^2 = threshold^2 * median of squared distances``
  (the reference notebook's convention).
- Minibatch CKA (Nguyen et al. 2021): unbiased HSIC summed over minibatches, then normalised; memory
  is bounded by the minibatch size.
- Gram drift: ``||K~ - K~0||_F / ||K~0||_F`` for centred linear Grams of the embeddings of the same
  inputs under the model and the reference model (computed from D x D cross-covariances, no N x N).
- Class-centroid cosine: per class, the cosine between the mean unit embedding of ID images and the
  mean unit embedding of the shifted (OOD or adversarial) images of that class; averaged over classes.
- LID (Levina & Bickel 2004 MLE, as in Ma et al. 2018): ``-(1/k sum_i log(r_i / r_k))^-1`` from the k
  nearest clean reference embeddings; ``Delta LID = mean LID(shifted) - mean LID(clean)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from grace_bench.errors import UserError
from grace_bench.geometry.losses import Batch

ArrayLike = np.ndarray | torch.Tensor


def _t64(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().to(torch.float64)


def gram_linear(x: ArrayLike) -> torch.Tensor:
    """Linear kernel ``X X^T`` (float64)."""
    x = _t64(x)
    return x @ x.T


def gram_rbf(x: ArrayLike, threshold: float = 1.0) -> torch.Tensor:
    """RBF kernel with ``sigma^2 = threshold^2 * median(squared pairwise distances)`` (float64)."""
    x = _t64(x)
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    med = float(np.median(d2.numpy()))
    return torch.exp(-d2 / (2 * threshold**2 * med))


def center_gram(k: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """``H K H`` (biased), or the U-centred Gram whose inner products give the unbiased HSIC."""
    k = _t64(k)
    if not torch.allclose(k, k.T, rtol=1e-8, atol=1e-10 * float(k.abs().max().clamp_min(1))):
        raise ValueError("a Gram matrix must be symmetric")
    n = k.shape[0]
    if not unbiased:
        row = k.mean(0)
        return k - row[:, None] - row[None, :] + row.mean()
    if n < 4:
        raise UserError(f"debiased CKA needs at least 4 samples, got {n}")
    k = k.clone()
    k.fill_diagonal_(0)
    col = k.sum(0) / (n - 2)
    col = col - col.sum() / (2 * (n - 1))
    k = k - col[:, None] - col[None, :]
    k.fill_diagonal_(0)
    return k


def cka(gram_x: ArrayLike, gram_y: ArrayLike, debiased: bool = False) -> float:
    """CKA between two Gram matrices (biased, or debiased with the unbiased HSIC)."""
    kx = center_gram(_t64(gram_x), unbiased=debiased)
    ky = center_gram(_t64(gram_y), unbiased=debiased)
    return float((kx * ky).sum() / (kx.norm() * ky.norm()))


def linear_cka(x: ArrayLike, y: ArrayLike, debiased: bool = False) -> float:
    """Linear CKA between feature matrices (n, d1) and (n, d2)."""
    return cka(gram_linear(x), gram_linear(y), debiased=debiased)


def rbf_cka(x: ArrayLike, y: ArrayLike, threshold: float = 1.0, debiased: bool = False) -> float:
    """RBF CKA between feature matrices, bandwidth ``threshold`` x the median distance."""
    return cka(gram_rbf(x, threshold), gram_rbf(y, threshold), debiased=debiased)


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012) of two n x n Grams, n >= 4."""
    n = k.shape[0]
    if n < 4:
        raise UserError(f"minibatch CKA needs minibatches of at least 4 samples, got {n}")
    k = k.clone()
    l = l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones_k = k.sum(0)
    ones_l = l.sum(0)
    term = (k * l).sum() + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2)) - 2 * (ones_k @ ones_l) / (n - 2)
    return term / (n * (n - 3))


class MinibatchCKA:
    """Streaming linear CKA between every pair of X-layers and Y-layers (Nguyen et al. 2021).

    ``update(xs, ys)`` takes lists of (b, d) feature minibatches; memory is O(b^2) per layer.
    """

    def __init__(self, num_x: int, num_y: int) -> None:
        self.xy = torch.zeros(num_x, num_y, dtype=torch.float64)
        self.xx = torch.zeros(num_x, dtype=torch.float64)
        self.yy = torch.zeros(num_y, dtype=torch.float64)
        self.num_batches = 0

    @torch.no_grad()
    def update(self, xs: Sequence[ArrayLike], ys: Sequence[ArrayLike]) -> None:
        grams_x = [gram_linear(x) for x in xs]
        grams_y = [gram_linear(y) for y in ys]
        for i, kx in enumerate(grams_x):
            self.xx[i] += hsic_unbiased(kx, kx)
            for j, ky in enumerate(grams_y):
                self.xy[i, j] += hsic_unbiased(kx, ky)
        for j, ky in enumerate(grams_y):
            self.yy[j] += hsic_unbiased(ky, ky)
        self.num_batches += 1

    def compute(self) -> np.ndarray:
        """The (num_x, num_y) CKA matrix."""
        if self.num_batches == 0:
            raise UserError("minibatch CKA saw no data; pass a non-empty dataset")
        return (self.xy / torch.sqrt(self.xx[:, None] * self.yy[None, :])).numpy()


def minibatch_cka(x: ArrayLike, y: ArrayLike, batch_size: int = 256) -> float:
    """Linear minibatch CKA between two (n, d) feature matrices, processed ``batch_size`` rows at a time."""
    n = x.shape[0]
    acc = MinibatchCKA(1, 1)
    for start in range(0, n - 3, batch_size):
        stop = min(start + batch_size, n)
        if stop - start >= 4:
            acc.update([x[start:stop]], [y[start:stop]])
    return float(acc.compute()[0, 0])


# ---------------------------------------------------------------- hooks on OpenCLIP vision transformers


def vision_tower(model: nn.Module) -> nn.Module:
    """The OpenCLIP ``visual`` module of a CLIP model or of a classifier wrapping one (``.model``)."""
    for candidate in (model, getattr(model, "model", None)):
        visual = getattr(candidate, "visual", None)
        if visual is not None and hasattr(getattr(visual, "transformer", None), "resblocks"):
            return visual
    raise UserError("features need an OpenCLIP ViT (model.visual.transformer.resblocks); this model has none")


def token_layout(output: torch.Tensor, batch_size: int, batch_first: bool | None) -> str:
    """``NLD`` or ``LND`` for a resblock output of a batch of ``batch_size`` images."""
    if output.dim() != 3:
        raise ValueError(f"expected a 3-d token tensor, got shape {tuple(output.shape)}")
    if batch_first is not None:
        return "NLD" if batch_first else "LND"
    n0, n1 = output.shape[0] == batch_size, output.shape[1] == batch_size
    if n0 and not n1:
        return "NLD"
    if n1 and not n0:
        return "LND"
    raise ValueError("ambiguous token layout (batch size equals sequence length) and no batch_first attribute")


@contextmanager
def resblock_hooks(model: nn.Module, batch_size_ref: list[int], pool: str = "auto") -> Iterator[dict[str, list]]:
    """Forward hooks on every vision resblock collecting pooled tokens; hooks are always removed on exit.

    Yields a dict ``layer name -> list of (B, D) tensors``. ``pool``: ``cls`` (token 0), ``mean`` or
    ``auto`` (``cls`` if the tower pools by token, else ``mean``). ``batch_size_ref[0]`` must hold the
    current batch size (used to detect the layout when the transformer has no ``batch_first``).
    """
    visual = vision_tower(model)
    transformer = visual.transformer
    if pool == "auto":
        pool = "cls" if getattr(visual, "pool_type", "tok") == "tok" else "mean"
    if pool not in ("cls", "mean"):
        raise UserError(f"unknown token pooling '{pool}'; use cls, mean or auto")
    batch_first = getattr(transformer, "batch_first", None)
    store: dict[str, list] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            layout = token_layout(out, batch_size_ref[0], batch_first)
            tokens = out if layout == "NLD" else out.transpose(0, 1)
            pooled = tokens[:, 0] if pool == "cls" else tokens.mean(dim=1)
            # a copy: the CLS slice is a view of the block's whole output, which later blocks may reuse or change
            store[name].append(pooled.detach().to("cpu", torch.float32, copy=True))

        return hook

    try:
        for i, block in enumerate(transformer.resblocks):
            name = f"resblock.{i}"
            store[name] = []
            handles.append(block.register_forward_hook(make_hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "image_features"):
        return model.image_features(x)
    return torch.nn.functional.normalize(model.encode_image(x), dim=-1)


@torch.no_grad()
def layer_features(
    model: nn.Module,
    batches: Sequence[Batch] | Sequence[torch.Tensor],
    *,
    pool: str = "auto",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Pooled token features of every vision resblock plus ``embedding`` (unit image embedding), (N, D) each.

    ``model`` is a ``ZeroShotClassifier`` (images in [0, 1]) or an OpenCLIP model (normalised images).
    """
    size = [0]
    embeds = []
    was_training = model.training
    model.eval()
    try:
        with resblock_hooks(model, size, pool) as store:
            for batch in tqdm(batches, desc="features", disable=not progress, leave=False):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                x = x.to(_device(model))
                size[0] = x.shape[0]
                embeds.append(_embed(model, x).float().cpu())
            feats = {k: torch.cat(v) for k, v in store.items()}
    finally:
        model.train(was_training)
    feats["embedding"] = torch.cat(embeds)
    return feats


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def layerwise_cka(
    model: nn.Module,
    reference: nn.Module,
    batches: Sequence[Batch],
    *,
    pool: str = "auto",
    progress: bool = False,
) -> tuple[list[str], list[str], np.ndarray]:
    """Minibatch linear CKA between every layer of ``model`` and every layer of ``reference`` (streamed).

    Returns (model layer names, reference layer names, CKA matrix). Batches need >= 4 samples each.
    """
    acc = None
    names_x = names_y = None
    for batch in tqdm(batches, desc="layerwise CKA", disable=not progress, leave=False):
        fx = layer_features(model, [batch], pool=pool)
        fy = layer_features(reference, [batch], pool=pool)
        if batch[0].shape[0] < 4:
            continue
        if acc is None:
            names_x, names_y = list(fx), list(fy)
            acc = MinibatchCKA(len(names_x), len(names_y))
        acc.update([fx[n] for n in names_x], [fy[n] for n in names_y])
    if acc is None:
        raise UserError("layerwise CKA needs batches of at least 4 images; raise batch_size")
    return names_x, names_y, acc.compute()


def layerwise_cka_from_features(
    features: dict[str, torch.Tensor],
    ref_features: dict[str, torch.Tensor],
    batch_sizes: Sequence[int],
) -> tuple[list[str], list[str], np.ndarray]:
    """``layerwise_cka`` from features already collected (``layer_features``), rows split into ``batch_sizes``.

    With the batch sizes of the batches the features came from, the result equals ``layerwise_cka``'s.
    """
    names_x, names_y = list(features), list(ref_features)
    acc = MinibatchCKA(len(names_x), len(names_y))
    start = 0
    for size in batch_sizes:
        stop = start + int(size)
        if size >= 4:
            acc.update([features[n][start:stop] for n in names_x], [ref_features[n][start:stop] for n in names_y])
        start = stop
    if acc.num_batches == 0:
        raise UserError("layerwise CKA needs batches of at least 4 images; raise batch_size")
    return names_x, names_y, acc.compute()


def gram_drift(features: ArrayLike, ref_features: ArrayLike) -> float:
    """``||K~ - K~0||_F / ||K~0||_F`` for centred linear Grams, computed via D x D cross-products."""
    x = _t64(features)
    y = _t64(ref_features)
    if x.shape[0] != y.shape[0]:
        raise UserError("Gram drift needs embeddings of the same inputs (equal counts) from both models")
    x = x - x.mean(0)
    y = y - y.mean(0)
    kk = (x.T @ x).pow(2).sum()
    ll = (y.T @ y).pow(2).sum()
    kl = (x.T @ y).pow(2).sum()
    return float(torch.sqrt((kk + ll - 2 * kl).clamp_min(0)) / torch.sqrt(ll))


def centroid_cosine(
    id_features: ArrayLike,
    id_labels: ArrayLike,
    shifted_features: ArrayLike,
    shifted_labels: ArrayLike,
) -> dict:
    """Mean over shared classes of cos(mean ID embedding, mean shifted embedding); per-class values too."""
    fx, fy = _t64(id_features), _t64(shifted_features)
    fx = fx / fx.norm(dim=1, keepdim=True).clamp_min(1e-12)
    fy = fy / fy.norm(dim=1, keepdim=True).clamp_min(1e-12)
    lx = torch.as_tensor(np.asarray(id_labels)).long()
    ly = torch.as_tensor(np.asarray(shifted_labels)).long()
    per_class = {}
    for c in sorted(set(lx.tolist()) & set(ly.tolist())):
        a, b = fx[lx == c].mean(0), fy[ly == c].mean(0)
        per_class[int(c)] = float(a @ b / (a.norm() * b.norm()).clamp_min(1e-12))
    if not per_class:
        raise UserError("class-centroid cosine found no class present in both sets; check the labels")
    return {"mean": float(np.mean(list(per_class.values()))), "per_class": per_class, "num_classes": len(per_class)}


def lid_mle(queries: ArrayLike, reference: ArrayLike, k: int = 20, *, exclude_self: bool = False,
            chunk: int = 1024) -> np.ndarray:
    """Per-query LID MLE from the ``k`` nearest Euclidean neighbours in ``reference``.

    ``exclude_self`` drops the nearest neighbour (use when ``queries`` is ``reference``).
    """
    q, r = _t64(queries), _t64(reference)
    need = k + (1 if exclude_self else 0)
    if r.shape[0] < need:
        raise UserError(f"LID with k={k} needs at least {need} reference samples, got {r.shape[0]}; raise n (the "
                        "subset size) or lower k")
    out = []
    for start in range(0, q.shape[0], chunk):
        d = torch.cdist(q[start : start + chunk], r)
        knn = d.topk(need, dim=1, largest=False).values
        if exclude_self:
            knn = knn[:, 1:]
        knn = knn.clamp_min(1e-12)
        ratio = torch.log(knn / knn[:, -1:]).mean(dim=1)
        out.append(-1.0 / ratio.clamp_max(-1e-12))
    return torch.cat(out).numpy()


def delta_lid(clean: ArrayLike, shifted: ArrayLike, k: int = 20) -> dict:
    """``mean LID(shifted | clean) - mean LID(clean | clean)``, neighbours always from the clean set."""
    lid_clean = lid_mle(clean, clean, k, exclude_self=True)
    lid_shift = lid_mle(shifted, clean, k)
    return {"delta": float(lid_shift.mean() - lid_clean.mean()), "lid_clean": float(lid_clean.mean()),
            "lid_shifted": float(lid_shift.mean()), "k": k}
