"""Loss landscapes: 1D/2D slices along filter-normalised random directions and checkpoint interpolation.

- Directions (Li et al. 2018): a Gaussian direction per parameter, rescaled filter by filter (rows of
  the first dimension) to the norm of the matching filter of the weights. 0-d and 1-d parameters
  (biases, LayerNorm, ``logit_scale``, the class embedding) get a zero direction. Directions are
  drawn on the CPU from the seed, so they are the same on every device; they are also stored.
- Grids: ``theta + a * d1 (+ b * d2)``; interpolation: ``(1 - a) * theta0 + a * theta1`` over every
  floating-point state-dict entry. Each point records mean CE and top-1 accuracy on fixed data.
- Resume: with ``cache_path``, the partial grid is saved atomically as it goes (and on interrupt);
  a rerun continues it. A cache whose metadata (shape, coordinates, directions, data, weights)
  differs is refused with a ``UserError`` (or recomputed when ``on_mismatch='recompute'``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from grace_bench.errors import UserError
from grace_bench.geometry.losses import (
    Batch,
    LossFn,
    NamedParams,
    as_batches,
    batches_fingerprint,
    eval_mode,
    loss_and_accuracy,
)
from grace_bench.geometry.ranges import parse_range  # noqa: F401  (re-exported)
from grace_bench.utils.atomic import atomic_path
from grace_bench.utils.npz import NPZ_READ_ERRORS, load_npz

Direction = dict[str, torch.Tensor]
OnMismatch = Literal["error", "recompute"]


def filter_normalized_direction(params: NamedParams, seed: int) -> Direction:
    """A random direction with each filter scaled to the weights' filter norm; zero for 0-d/1-d params."""
    gen = torch.Generator().manual_seed(int(seed))
    out: Direction = {}
    for name, p in params:
        w = p.detach().float().cpu()
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=gen)
        rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
        rows_d = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        scale = (rows_w / rows_d).view(-1, *([1] * (w.dim() - 1)))
        out[name] = d * scale
    return out


def direction_hash(direction: Direction) -> str:
    """sha256 (16 hex chars) of a direction's names, shapes and values."""
    h = hashlib.sha256()
    for name in sorted(direction):
        t = direction[name].detach().float().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def params_hash(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 (16 hex chars) of parameter values, to tie a cached grid to its weights."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().float().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_directions(path: str | Path, directions: Sequence[Direction], meta: dict | None = None) -> None:
    """Write directions to an NPZ (keys ``d{i}/{name}``) atomically."""
    arrays = {f"d{i}/{n}": t.detach().float().cpu().numpy() for i, d in enumerate(directions) for n, t in d.items()}
    arrays["meta_json"] = np.asarray(json.dumps(meta or {}, sort_keys=True))
    _save_npz(path, arrays)


def load_directions(path: str | Path, params: NamedParams, count: int) -> list[Direction]:
    """Read ``count`` directions saved by ``save_directions``; refuse ones that do not fit ``params``."""
    arrays = load_npz(path, fix="delete the file or pass fresh=True to draw new directions")
    out = []
    for i in range(count):
        d: Direction = {}
        for name, p in params:
            key = f"d{i}/{name}"
            if key not in arrays or tuple(arrays[key].shape) != tuple(p.shape):
                raise UserError(
                    f"saved directions {path} do not match the model ({key} missing or reshaped); "
                    "delete the file or pass fresh=True"
                )
            d[name] = torch.from_numpy(arrays[key].copy())
        out.append(d)
    return out


def _save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


class GridCache:
    """A partial grid (loss, accuracy, done mask) in an NPZ, validated against metadata on load."""

    def __init__(self, path: str | Path | None, meta: dict, shape: tuple[int, ...], on_mismatch: OnMismatch = "error"):
        self.path = Path(path) if path is not None else None
        self.meta = json.loads(json.dumps(meta, sort_keys=True, default=str))
        self.shape = tuple(shape)
        self.on_mismatch = on_mismatch

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        empty = (np.full(self.shape, np.nan), np.full(self.shape, np.nan), np.zeros(self.shape, dtype=bool))
        if self.path is None or not self.path.exists():
            return empty
        try:
            with np.load(self.path, allow_pickle=False) as z:
                cached_meta = json.loads(str(z["meta_json"]))
                loss, acc, done = z["loss"], z["accuracy"], z["done"]
        except NPZ_READ_ERRORS as exc:  # an empty, torn or garbled file
            return self._mismatch(f"unreadable contents ({type(exc).__name__})", empty)
        if not isinstance(cached_meta, dict):
            return self._mismatch("unreadable metadata", empty)
        if cached_meta != self.meta:
            keys = sorted(k for k in set(cached_meta) | set(self.meta) if cached_meta.get(k) != self.meta.get(k))
            return self._mismatch(f"different {', '.join(keys)}", empty)
        if loss.shape != self.shape or acc.shape != self.shape or done.shape != self.shape:
            return self._mismatch(f"shape {loss.shape} instead of {self.shape}", empty)
        return loss.copy(), acc.copy(), done.astype(bool)

    def _mismatch(self, why: str, empty):
        if self.on_mismatch == "recompute":
            return empty
        raise UserError(f"cached landscape grid {self.path} has {why}; delete it or rerun with fresh=True to recompute")

    def save(self, loss: np.ndarray, acc: np.ndarray, done: np.ndarray) -> None:
        if self.path is None:
            return
        _save_npz(self.path, {"loss": loss, "accuracy": acc, "done": done,
                              "meta_json": np.asarray(json.dumps(self.meta, sort_keys=True))})


def run_grid(
    model: nn.Module,
    batches: Sequence[Batch],
    shape: tuple[int, ...],
    coords: Callable[[tuple[int, ...]], tuple[float, ...]],
    apply: Callable[[tuple[float, ...]], None],
    restore: Callable[[], None],
    *,
    cache: GridCache | None = None,
    loss_fn: LossFn = F.cross_entropy,
    save_interval_s: float = 10.0,
    progress: bool = False,
    max_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate loss/accuracy at every grid index not yet done; saves progress; always restores weights.

    ``max_points`` stops after that many new points (the grid stays partial, as after a kill).
    """
    cache = cache or GridCache(None, {}, shape)
    loss, acc, done = cache.load()
    todo = [idx for idx in np.ndindex(*shape) if not done[idx]]
    last_save = time.monotonic()
    computed = 0
    try:
        with eval_mode(model):
            for idx in tqdm(todo, desc="landscape", disable=not progress, unit="pt"):
                if max_points is not None and computed >= max_points:
                    break
                apply(coords(idx))
                loss[idx], acc[idx] = loss_and_accuracy(model, batches, loss_fn)
                done[idx] = True
                computed += 1
                if time.monotonic() - last_save >= save_interval_s:
                    cache.save(loss, acc, done)
                    last_save = time.monotonic()
    finally:
        restore()
        cache.save(loss, acc, done)
    return loss, acc, done


def _direction_setter(params: NamedParams, directions: Sequence[Direction]):
    ps = [p for _, p in params]
    base = [p.detach().clone() for p in ps]
    dirs = [[d[n].to(device=p.device, dtype=p.dtype) for n, p in params] for d in directions]

    @torch.no_grad()
    def apply(coord: tuple[float, ...]) -> None:
        for j, (p, b) in enumerate(zip(ps, base)):
            new = b.clone()
            for c, d in zip(coord, dirs):
                new.add_(d[j], alpha=float(c))
            p.copy_(new)

    @torch.no_grad()
    def restore() -> None:
        for p, b in zip(ps, base):
            p.copy_(b)

    return apply, restore, base


def landscape(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    params: NamedParams,
    directions: Sequence[Direction],
    axes: Sequence[Sequence[float]],
    *,
    cache_path: str | Path | None = None,
    meta: dict | None = None,
    on_mismatch: OnMismatch = "error",
    loss_fn: LossFn = F.cross_entropy,
    save_interval_s: float = 10.0,
    progress: bool = False,
    max_points: int | None = None,
) -> dict:
    """Loss and accuracy on the grid ``theta + sum_i axes_i[k] * directions_i`` (1 or 2 directions).

    Returns ``{"axes", "loss", "accuracy", "done", "complete"}`` (arrays shaped like the grid).
    """
    if len(directions) not in (1, 2) or len(directions) != len(axes):
        raise UserError("a landscape needs one or two directions with one coordinate list each")
    for name, p in params:
        for d in directions:
            if name not in d or tuple(d[name].shape) != tuple(p.shape):
                raise UserError(f"direction does not fit parameter {name}; regenerate the directions (fresh=True)")
    batches = as_batches(data, device=params[0][1].device)
    axes_np = [np.asarray(a, dtype=np.float64) for a in axes]
    shape = tuple(len(a) for a in axes_np)
    apply, restore, base = _direction_setter(params, directions)
    full_meta = {
        "kind": f"{len(directions)}d",
        "shape": list(shape),
        "axes": [a.tolist() for a in axes_np],
        "directions": [direction_hash(d) for d in directions],
        "weights": params_hash(base),
        "data": batches_fingerprint(batches),
        "params": [n for n, _ in params],
        **(meta or {}),
    }
    cache = GridCache(cache_path, full_meta, shape, on_mismatch)
    loss, acc, done = run_grid(
        model, batches, shape, lambda idx: tuple(float(a[i]) for a, i in zip(axes_np, idx)), apply, restore,
        cache=cache, loss_fn=loss_fn, save_interval_s=save_interval_s, progress=progress, max_points=max_points,
    )
    return {"axes": axes_np, "loss": loss, "accuracy": acc, "done": done, "complete": bool(done.all()),
            "meta": full_meta}


def interpolation(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    state0: dict[str, torch.Tensor],
    state1: dict[str, torch.Tensor],
    alphas: Sequence[float],
    *,
    module: nn.Module | None = None,
    cache_path: str | Path | None = None,
    meta: dict | None = None,
    on_mismatch: OnMismatch = "error",
    loss_fn: LossFn = F.cross_entropy,
    save_interval_s: float = 10.0,
    progress: bool = False,
    max_points: int | None = None,
) -> dict:
    """Loss/accuracy of ``(1 - a) * state0 + a * state1`` loaded into ``module`` (default ``model``).

    Both state dicts must hold every floating-point entry of ``module.state_dict()`` with the same shape.
    They are copied first, so either may be ``module.state_dict()`` itself (whose tensors are the live weights).
    """
    module = module if module is not None else model
    target = {k: v for k, v in module.state_dict().items() if v.is_floating_point()}
    for name, t in target.items():
        for which, sd in (("reference", state0), ("checkpoint", state1)):
            if name not in sd or tuple(sd[name].shape) != tuple(t.shape):
                raise UserError(f"{which} weights lack {name} (or its shape differs); interpolate checkpoints "
                                "of the same architecture")
    keys = sorted(target)
    # copies: a state dict shares storage with the live weights, which every grid point overwrites
    w0 = [_endpoint(state0[k], target[k]) for k in keys]
    w1 = [_endpoint(state1[k], target[k]) for k in keys]
    saved = [target[k].detach().clone() for k in keys]
    batches = as_batches(data, device=next(iter(target.values())).device)

    @torch.no_grad()
    def apply(coord: tuple[float, ...]) -> None:
        a = float(coord[0])
        for k, a0, a1 in zip(keys, w0, w1):
            target[k].copy_((a0 * (1 - a) + a1 * a).to(target[k].dtype))

    @torch.no_grad()
    def restore() -> None:
        for k, s in zip(keys, saved):
            target[k].copy_(s)

    axis = np.asarray(alphas, dtype=np.float64)
    full_meta = {"kind": "interpolation", "shape": [len(axis)], "axes": [axis.tolist()],
                 "weights": params_hash(w0 + w1), "data": batches_fingerprint(batches), **(meta or {})}
    cache = GridCache(cache_path, full_meta, (len(axis),), on_mismatch)
    loss, acc, done = run_grid(
        model, batches, (len(axis),), lambda idx: (float(axis[idx[0]]),), apply, restore,
        cache=cache, loss_fn=loss_fn, save_interval_s=save_interval_s, progress=progress, max_points=max_points,
    )
    return {"axes": [axis], "loss": loss, "accuracy": acc, "done": done, "complete": bool(done.all()),
            "meta": full_meta}


def _endpoint(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A private copy of an endpoint entry on ``like``'s device, in at least float32."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    return value.detach().to(device=like.device, dtype=dtype, copy=True)
