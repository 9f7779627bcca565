"""Curvature operators: symmetric linear maps on flat vectors that the estimators in ``estimators`` accept.

An operator has ``dim``, ``dtype``, ``device``, a ``num_hvp`` counter and ``matvec(v)``; ``slices()``
(parameter name -> slice of a flat vector) is optional and lets estimators report per-layer numbers;
``gradient()`` is optional and lets Lanczos start from the loss gradient.

- ``HessianOperator``: the loss Hessian w.r.t. one parameter group, by double backward (HVPs).
- ``MatrixOperator``: an explicit dense symmetric matrix (tests, small problems).
- ``BlockOperator``: the diagonal block ``H_SS`` of any operator on a subset ``S`` of its coordinates
  (a layer block); ``layer_blocks`` makes one per layer.
- ``DataParallelOperator``: each rank holds the operator of its own data shard; the matvec is the
  sample-weighted all-reduce of the local ones, i.e. the operator of the whole data set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from grace_bench.geometry.layers import layer_groups
from grace_bench.geometry.losses import (
    Batch,
    LossFn,
    NamedParams,
    as_batches,
    eval_mode,
    grad_only_for,
    math_sdpa,
    num_samples,
)


@runtime_checkable
class CurvatureOperator(Protocol):
    """What every estimator needs: a symmetric matvec on length-``dim`` vectors and an HVP counter."""

    dim: int
    dtype: torch.dtype
    device: torch.device
    num_hvp: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def _check_vector(v: torch.Tensor, dim: int) -> None:
    if v.shape != (dim,):
        raise ValueError(f"expected a vector of shape ({dim},), got {tuple(v.shape)}")


def operator_slices(op: CurvatureOperator) -> dict[str, slice]:
    """``op.slices()`` when the operator names its coordinates, else one block ``all``."""
    slices = getattr(op, "slices", None)
    return slices() if callable(slices) else {"all": slice(0, op.dim)}


class HessianOperator:
    """The loss Hessian w.r.t. a parameter group as a matvec on flat vectors of length ``dim``.

    With ``cache_graph`` (default for a single batch) the gradient graph is built once and every HVP is
    one extra backward, as in PyHessian; otherwise each HVP rebuilds it batch by batch (bounded memory).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Batch | Sequence[Batch],
        params: NamedParams,
        loss_fn: LossFn = F.cross_entropy,
        *,
        cache_graph: bool | None = None,
    ) -> None:
        if not params:
            raise ValueError("params must hold at least one parameter (choose a non-empty parameter group)")
        self.model = model
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        self.batches = as_batches(data, device=self.params[0].device)
        self.loss_fn = loss_fn
        self.shapes = [tuple(p.shape) for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = int(sum(self.numels))
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.num_samples = num_samples(self.batches)
        self.cache_graph = len(self.batches) == 1 if cache_graph is None else bool(cache_graph)
        self.num_hvp = 0
        self._cached: tuple[list, list[int]] | None = None  # (gradients with graph, indices that need it)

    def slices(self) -> dict[str, slice]:
        """Offsets of each parameter inside a flat vector."""
        out, start = {}, 0
        for name, n in zip(self.names, self.numels):
            out[name] = slice(start, start + n)
            start += n
        return out

    def restrict(self, names: Sequence[str]) -> HessianOperator:
        """The Hessian w.r.t. a sub-group of the parameters (a diagonal block, by cheaper backwards)."""
        chosen = [(n, p) for n, p in zip(self.names, self.params) if n in set(names)]
        return HessianOperator(self.model, self.batches, chosen, self.loss_fn, cache_graph=self.cache_graph)

    def _grads_with_graph(self, batches: Sequence[Batch], weight: float) -> tuple[list[torch.Tensor], list[int]]:
        with eval_mode(self.model), grad_only_for(self.model, self.params), math_sdpa(), torch.enable_grad():
            loss = None
            for x, y in batches:
                term = self.loss_fn(self.model(x), y) * (y.shape[0] * weight)
                loss = term if loss is None else loss + term
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return list(grads), live

    def _hvp_from(self, grads: list, live: list[int], vs: list[torch.Tensor], retain: bool) -> list:
        """``H v`` from the gradients (all of them; only the ``live`` ones depend on the parameters)."""
        if not live:
            return [None] * len(self.params)
        hv = torch.autograd.grad(
            [grads[i] for i in live], [self.params[i] for i in live], grad_outputs=[vs[i] for i in live],
            retain_graph=retain, allow_unused=True,
        )
        out: list[torch.Tensor | None] = [None] * len(self.params)
        for i, h in zip(live, hv):
            out[i] = h
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H @ v`` for a flat vector ``v`` of length ``dim``."""
        _check_vector(v, self.dim)
        vs = [c.view(s) for c, s in zip(v.to(self.dtype).split(self.numels), self.shapes)]
        total = [torch.zeros_like(p) for p in self.params]
        if self.cache_graph:
            if self._cached is None:
                self._cached = self._grads_with_graph(self.batches, 1.0 / self.num_samples)
            parts = [self._hvp_from(*self._cached, vs, retain=True)]
        else:
            parts = []
            for batch in self.batches:
                grads, live = self._grads_with_graph([batch], 1.0 / self.num_samples)
                parts.append(self._hvp_from(grads, live, vs, retain=False))
        for part in parts:
            for t, h in zip(total, part):
                if h is not None:
                    t.add_(h.detach())
        self.num_hvp += 1
        return torch.cat([t.reshape(-1) for t in total])

    def gradient(self) -> torch.Tensor:
        """The flat loss gradient: free once the gradient graph is cached, else one backward per batch."""
        total = [torch.zeros_like(p) for p in self.params]
        if self.cache_graph:
            if self._cached is None:
                self._cached = self._grads_with_graph(self.batches, 1.0 / self.num_samples)
            for t, g in zip(total, self._cached[0]):
                if g is not None:
                    t += g.detach()
        else:
            with eval_mode(self.model), grad_only_for(self.model, self.params), math_sdpa(), torch.enable_grad():
                for x, y in self.batches:
                    loss = self.loss_fn(self.model(x), y) * (y.shape[0] / self.num_samples)
                    for t, g in zip(total, torch.autograd.grad(loss, self.params, allow_unused=True)):
                        if g is not None:
                            t += g
        return torch.cat([t.reshape(-1) for t in total])

    def release(self) -> None:
        """Free the cached gradient graph."""
        self._cached = None


def build_operator(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    params: NamedParams,
    loss_fn: LossFn = F.cross_entropy,
    *,
    cache_graph: bool | None = None,
) -> HessianOperator:
    """``HessianOperator`` for ``model`` on ``data`` w.r.t. ``params`` (see ``losses.select_params``)."""
    return HessianOperator(model, data, params, loss_fn, cache_graph=cache_graph)


class MatrixOperator:
    """An explicit symmetric matrix as an operator; ``blocks`` optionally names coordinate ranges."""

    def __init__(self, matrix: torch.Tensor, blocks: Mapping[str, slice] | None = None) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        if not torch.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-8 * float(matrix.abs().max().clamp_min(1))):
            raise ValueError("matrix must be symmetric")
        self.matrix = matrix
        self.dim = int(matrix.shape[0])
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.num_hvp = 0
        self._blocks = dict(blocks) if blocks is not None else {"all": slice(0, self.dim)}

    def slices(self) -> dict[str, slice]:
        return dict(self._blocks)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        _check_vector(v, self.dim)
        self.num_hvp += 1
        return self.matrix @ v.to(self.dtype)


class BlockOperator:
    """The diagonal block ``H_SS`` of ``op`` on the coordinates ``S`` (a union of slices), in their order.

    Each matvec costs one matvec of ``op`` (counted on both). For a ``HessianOperator``,
    ``HessianOperator.restrict`` gives the same block with backwards through fewer parameters.
    """

    def __init__(self, op: CurvatureOperator, slices: Mapping[str, slice]) -> None:
        if not slices:
            raise ValueError("slices must name at least one coordinate range")
        self.op = op
        self._parent = dict(slices)
        self.index = torch.cat([torch.arange(s.start, s.stop, device=op.device) for s in self._parent.values()])
        self.dim = int(self.index.numel())
        self.dtype = op.dtype
        self.device = op.device
        self.num_hvp = 0

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, s in self._parent.items():
            out[name] = slice(start, start + (s.stop - s.start))
            start = out[name].stop
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        _check_vector(v, self.dim)
        full = torch.zeros(self.op.dim, device=self.device, dtype=self.dtype)
        full[self.index] = v.to(self.dtype)
        self.num_hvp += 1
        return self.op.matvec(full)[self.index]


def layer_blocks(op: CurvatureOperator, granularity: str = "block") -> dict[str, BlockOperator]:
    """One ``BlockOperator`` per layer of ``op`` (see ``layers.layer_key``)."""
    names = operator_slices(op)
    groups = layer_groups(names, granularity)
    members: dict[str, dict[str, slice]] = {}
    for key, sls in groups.items():
        members[key] = {n: s for n, s in names.items() if s in sls}
    return {key: BlockOperator(op, sl) for key, sl in members.items()}


AllReduce = Callable[[torch.Tensor], None]


def _torch_all_reduce(group) -> AllReduce:
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    return reduce


class DataParallelOperator:
    """The operator of the data of all ranks, from each rank's operator of its own shard.

    ``local`` averages over its ``local.num_samples`` samples; the global operator is
    ``sum_r (n_r / N) H_r``, so every matvec is one local matvec and one all-reduce (SUM, in place)
    of ``(n_r / N) H_r v``. Every rank must call ``matvec`` with the same ``v`` (same seeds).
    ``all_reduce`` (default: ``torch.distributed.all_reduce`` on ``group``) is injectable for tests.
    """

    def __init__(self, local: CurvatureOperator, group=None, *, all_reduce: AllReduce | None = None) -> None:
        self.local = local
        self._reduce = all_reduce or _torch_all_reduce(group)
        local_n = getattr(local, "num_samples", None)
        if local_n is None:
            raise ValueError("the local operator must say how many samples it averages over (num_samples)")
        count = torch.tensor([float(local_n)], dtype=torch.float64, device=local.device)
        self._reduce(count)
        self.num_samples = int(count.item())
        self.weight = float(local_n) / self.num_samples
        self.dim, self.dtype, self.device = local.dim, local.dtype, local.device
        self.num_hvp = 0

    def slices(self) -> dict[str, slice]:
        return operator_slices(self.local)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = self.local.matvec(v) * self.weight
        self._reduce(out)
        self.num_hvp += 1
        return out

    def gradient(self) -> torch.Tensor:
        out = self.local.gradient() * self.weight
        self._reduce(out)
        return out
