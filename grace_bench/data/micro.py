"""The micro suite: a complete miniature of the ImageNet study on scikit-learn's handwritten digits.

* ``micro`` (ID): the 1797 real 8x8 digits, bilinearly upscaled to 32x32, white ink on black, with
  fixed stratified splits ``train`` (60%), ``val`` (10%) and ``test`` (30%), seed 0.
* ``micro-v2`` (OOD, like ImageNet-V2): the test digits "re-collected": nearest-neighbour upscaling
  (blocky strokes), small random rotation/shift/scale and a gamma change.
* ``micro-sketch`` (OOD, like ImageNet-Sketch): black Sobel outlines on white paper.
* ``micro-r`` (OOD, like ImageNet-R): renditions with textured ink and textured backgrounds and thick
  strokes, styles never seen in pretraining (which only sees flat colours).
* ``micro-a`` (nat-adv, like ImageNet-A): plain renderings of the test digits under strong natural
  nuisances (rotation, zoom, off-centre framing, occluders, clutter strokes), kept only when a fixed
  reference classifier (logistic regression on the plain train split, seed 0) gets them wrong, the
  way ImageNet-A was filtered against ResNet-50. The selection ships in ``resources/micro_a_selection.txt``
  (the fit's margin cases vary with BLAS threads and CPU; the shipped list makes micro-a the same everywhere).

Every set is generated deterministically from a seed; nothing is downloaded. Generated sets are cached as
``.npz`` files in the cache folder (``$GRACE_BENCH_CACHE``), keyed by ``MICRO_DATA_VERSION``, the seeds and the
versions of the packages that compute them; a missing or unreadable cache file is simply regenerated.
"""

from __future__ import annotations

import logging
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from grace_bench.data import micro_render as R
from grace_bench.data.micro_text import MICRO_CLASSNAMES, MICRO_TEMPLATES, SINGLE_TEMPLATE
from grace_bench.data.suite_spec import DatasetSpec, Suite
from grace_bench.data.training_defaults import from_tuning_file
from grace_bench.errors import UserError
from grace_bench.utils.atomic import atomic_path
from grace_bench.utils.cache import cache_dir
from grace_bench.utils.hashing import config_hash

__all__ = [
    "MICRO_CLASSNAMES", "MICRO_TEMPLATES", "SINGLE_TEMPLATE", "MICRO_DATASETS", "micro_dataset",
    "pretrain_renditions", "split_indices", "digits",
]

SPLIT_SEED = 0
SHIFT_SEEDS = {"micro-v2": 101, "micro-sketch": 102, "micro-r": 103, "micro-a": 104}
MICRO_A_VARIANTS = 6
MICRO_A_MAX = 600
MICRO_DATASETS = ("micro", "micro-v2", "micro-sketch", "micro-r", "micro-a")
# Bump whenever a change to this module (or micro_render) changes any generated image or label.
MICRO_DATA_VERSION = "micro-data-3"
# micro-a's images: indices into its nuisance pool, made once by ``select_micro_a`` (see that function).
MICRO_A_SELECTION = Path(__file__).parent / "resources" / "micro_a_selection.txt"

_log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: (1797, 8, 8) intensities in [0, 16] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Fixed stratified train/val/test indices into ``digits()`` (60/10/30, seed 0)."""
    from sklearn.model_selection import train_test_split

    _, y = digits()
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.3, stratify=y, random_state=SPLIT_SEED)
    train, val = train_test_split(rest, test_size=1 / 7, stratify=y[rest], random_state=SPLIT_SEED)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _split(split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown micro split '{split}'; use train, val or test")
    x, y = digits()
    idx = split_indices()[split]
    return x[idx], y[idx]


def pretrain_renditions(digits8: np.ndarray, rng: np.random.Generator, gray_fraction: float = 0.5) -> np.ndarray:
    """The varied renditions seen in micro-CLIP pretraining ("web photos" of digits).

    Every image gets geometric jitter, stroke-width change, blur and noise. A ``gray_fraction`` of them
    keeps light ink on a dark background with random grey levels; the rest get flat random colours
    of either polarity. Exact plain renderings (the ID test distribution) are never produced.
    """
    n = len(digits8)
    masks = R.upscale(digits8)
    masks = R.affine(masks, rng, max_rot=15, max_shift=0.08, scale=(0.85, 1.15))
    thick = rng.integers(-1, 2, n)
    for t in (-1, 1):
        sel = thick == t
        if sel.any():
            masks[sel] = R.thicken(masks[sel], t)
    sig = rng.choice([0.0, 0.0, 0.6, 1.0], n)
    for s in np.unique(sig):
        sel = sig == s
        masks[sel] = R.blur(masks[sel], float(s))
    fg, bg = R.random_colours(n, rng)
    gray = rng.random(n) < gray_fraction
    level_fg = rng.uniform(0.6, 1.0, gray.sum()).astype(np.float32)
    level_bg = rng.uniform(0.0, 0.3, gray.sum()).astype(np.float32)
    fg[gray] = level_fg[:, None]
    bg[gray] = level_bg[:, None]
    img = R.compose(masks, fg, bg)
    img += rng.normal(0, 1, img.shape).astype(np.float32) * rng.uniform(0, 0.06, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(img, 0, 1)


def _render_id(x8: np.ndarray) -> np.ndarray:
    return R.plain(R.upscale(x8))


def _render_v2(x8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    masks = R.upscale(x8, mode="nearest")
    masks = R.affine(masks, rng, max_rot=10, max_shift=0.06, scale=(0.85, 1.1))
    gamma = rng.uniform(0.5, 0.8, (len(x8), 1, 1)).astype(np.float32)
    return R.plain(masks**gamma)


def _render_sketch(x8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    masks = R.affine(R.upscale(x8), rng, max_rot=5, max_shift=0.03, scale=(0.95, 1.05))
    lines = np.clip(R.thicken(R.sobel_outline(masks), 1) * 1.6, 0, 1)
    paper = rng.uniform(0.85, 1.0, (len(x8), 1, 1)).astype(np.float32)
    gray = paper * (1 - lines)
    return np.repeat(gray[:, None], 3, axis=1).astype(np.float32)


def _render_r(x8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(x8)
    masks = R.thicken(R.affine(R.upscale(x8), rng, max_rot=8, max_shift=0.05, scale=(0.9, 1.1)), 1)
    ink, paper = R.texture(n, rng), R.texture(n, rng)
    # keep the ink distinguishable from the paper: shift the paper's brightness away from the ink's
    delta = ink.mean(axis=(1, 2, 3)) - paper.mean(axis=(1, 2, 3))
    paper = np.clip(paper - np.sign(delta + 1e-6)[:, None, None, None] * 0.35, 0, 1)
    return R.compose(masks, ink, paper)


def _nuisance_pool(x8: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MICRO_A_VARIANTS strongly perturbed plain renderings of each digit; returns images and source index."""
    src = np.repeat(np.arange(len(x8)), MICRO_A_VARIANTS)
    masks = R.affine(R.upscale(x8[src]), rng, max_rot=60, max_shift=0.2, scale=(0.6, 1.45))
    n = len(src)
    yy, xx = np.mgrid[0:R.SIZE, 0:R.SIZE]
    for i in range(n):
        if rng.random() < 0.8:  # an occluder
            h, w = rng.integers(8, 15, 2)
            y0, x0 = rng.integers(0, R.SIZE - h), rng.integers(0, R.SIZE - w)
            masks[i, y0:y0 + h, x0:x0 + w] = 0.0
        for _ in range(rng.integers(1, 3)):  # clutter strokes
            a, b, c = rng.normal(size=3)
            d = np.abs(a * (xx - 16) + b * (yy - 16) + c * 8) / np.hypot(a, b)
            masks[i] = np.maximum(masks[i], (d < 1.2).astype(np.float32) * rng.uniform(0.6, 1.0))
    return R.plain(masks), src


@lru_cache(maxsize=1)
def _reference_classifier():
    """The fixed reference classifier that filters micro-a: logistic regression on plain train pixels."""
    from sklearn.linear_model import LogisticRegression

    x8, y = _split("train")
    feats = _render_id(x8)[:, 0].reshape(len(y), -1)
    with one_blas_thread():
        return LogisticRegression(max_iter=2000, C=0.5, random_state=0).fit(feats, y)


def one_blas_thread():
    """A context that runs BLAS/OpenMP single-threaded, so micro-a is the same whatever the thread count.

    The logistic-regression fit, and so which images micro-a keeps, changes with the BLAS thread count
    (measured on 2 cores: micro-CLIP gets 112/600 right with 1 thread, 127/600 with 2 or more).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def select_micro_a() -> np.ndarray:
    """Recompute micro-a's selection: sorted nuisance-pool indices the reference classifier gets wrong.

    At most ``MICRO_A_MAX`` of them, drawn at random (seed ``SHIFT_SEEDS["micro-a"]``). One flipped prediction
    near the classifier's margin reshuffles the whole draw, so ``micro-a`` uses the selection shipped in
    ``MICRO_A_SELECTION`` (made by this function) and is the same on every machine.
    """
    x8, y = _split("test")
    rng = np.random.default_rng(SHIFT_SEEDS["micro-a"])
    pool, src = _nuisance_pool(x8, rng)
    with one_blas_thread():
        wrong = _reference_classifier().predict(pool[:, 0].reshape(len(pool), -1)) != y[src]
    return np.sort(rng.permutation(np.flatnonzero(wrong))[:MICRO_A_MAX])


@lru_cache(maxsize=1)
def shipped_micro_a_selection() -> np.ndarray:
    """The nuisance-pool indices micro-a keeps, read from ``MICRO_A_SELECTION`` (one per line, ``#`` comments)."""
    lines = [ln.strip() for ln in MICRO_A_SELECTION.read_text().splitlines()]
    try:
        keep = np.array([int(ln) for ln in lines if ln and not ln.startswith("#")], dtype=np.int64)
    except ValueError:
        keep = np.array([], dtype=np.int64)
    pool_size = len(split_indices()["test"]) * MICRO_A_VARIANTS
    if len(keep) != MICRO_A_MAX or len(np.unique(keep)) != len(keep) or keep.min() < 0 or keep.max() >= pool_size:
        raise UserError(f"{MICRO_A_SELECTION} is damaged (expected {MICRO_A_MAX} distinct pool indices below "
                        f"{pool_size}); reinstall grace-bench")
    return keep


def _generate(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Render one micro set from scratch (deterministic)."""
    if name == "micro":
        x8, y = _split(split)
        return np.ascontiguousarray(_render_id(x8), dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)
    x8, y = _split("test")
    rng = np.random.default_rng(SHIFT_SEEDS[name])
    if name == "micro-v2":
        img = _render_v2(x8, rng)
    elif name == "micro-sketch":
        img = _render_sketch(x8, rng)
    elif name == "micro-r":
        img = _render_r(x8, rng)
    else:
        pool, src = _nuisance_pool(x8, rng)
        keep = shipped_micro_a_selection()
        img, y = pool[keep], y[src][keep]
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def _check_name(name: str, split: str) -> None:
    if name == "micro":
        if split not in ("train", "val", "test"):
            raise UserError(f"unknown micro split '{split}'; use train, val or test")
        return
    if name not in SHIFT_SEEDS:
        raise UserError(f"unknown micro dataset '{name}'; choose one of: {', '.join(MICRO_DATASETS)}")
    if split != "test":
        raise UserError(f"micro shift '{name}' only has a test split")


def data_cache_path(name: str, split: str) -> Path:
    """The cache file of one micro set; its name changes with everything that determines the data."""
    from importlib.metadata import version

    key = config_hash({
        "version": MICRO_DATA_VERSION, "name": name, "split": split, "split_seed": SPLIT_SEED,
        "shift_seeds": SHIFT_SEEDS, "micro_a": [MICRO_A_VARIANTS, MICRO_A_MAX], "size": R.SIZE,
        "packages": {p: version(p) for p in ("numpy", "torch", "scikit-learn")},
    })
    return cache_dir() / "micro-data" / f"{name}-{split}-{key}.npz"


def _read_cached(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The arrays of a cache file, or None when it is missing or unreadable (then it is regenerated)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    except Exception as e:  # noqa: BLE001 - a truncated or garbled file raises many types; regenerate it
        _log.warning("regenerating unreadable micro data cache %s (%s)", path, e)
        return None
    ok = (x.dtype == np.float32 and y.dtype == np.int64 and x.ndim == 4 and x.shape[1:] == (3, R.SIZE, R.SIZE)
          and y.shape == (len(x),) and bool(np.isfinite(x).all()))
    if not ok:
        _log.warning("regenerating malformed micro data cache %s", path)
        return None
    return x, y


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, x=x, y=y)  # 34 -> 9 MB over the eval sets (plain digits ~10x, micro-r 1.4x)
    except OSError as e:  # an unwritable cache only costs time
        _log.warning("could not cache micro data at %s (%s)", path, e)


@cache
def _build(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    _check_name(name, split)
    path = data_cache_path(name, split)
    arrays = _read_cached(path)
    if arrays is None:
        arrays = _generate(name, split)
        _write_cache(path, *arrays)
    x, y = arrays
    return torch.from_numpy(x), torch.from_numpy(y)


def micro_dataset(name: str, split: str = "test") -> TensorDataset:
    """A micro dataset as a TensorDataset of (images (N,3,32,32) in [0,1], labels (N,))."""
    x, y = _build(name, split)
    return TensorDataset(x, y)


def micro_suite() -> Suite:
    """The micro suite (registered as ``micro`` in ``grace_bench.data.suites``)."""
    roles = {"micro": "id", "micro-v2": "ood", "micro-sketch": "ood", "micro-r": "ood", "micro-a": "nat-adv"}
    specs = tuple(
        DatasetSpec(name=n, role=roles[n], loader=(lambda ctx, n=n: micro_dataset(n, "test")))
        for n in MICRO_DATASETS
    )
    return Suite(
        name="micro",
        classnames=MICRO_CLASSNAMES,
        templates=MICRO_TEMPLATES,
        datasets=specs,
        train_loader=lambda ctx, split: micro_dataset("micro", split),
        default_checkpoint="micro",
        info={"image_size": R.SIZE, "splits": {k: int(len(v)) for k, v in split_indices().items()}},
        training=lambda: from_tuning_file("micro"),  # the study's budget and its val-tuned learning rates
        attack="apgd-ce[restarts=1]",
        eps="4/255",
        n_adv=250,
        model_archs=("micro-clip", "tiny-clip"),
        loader_workers=0,  # in-memory tensors
    )
