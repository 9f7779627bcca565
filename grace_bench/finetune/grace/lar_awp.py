"""LAR-AWP: a low-rank adversarial weight perturbation on every LoRA layer.

Each adapted layer gets ``dW = B_awp @ diag(m) @ A_awp`` with ``A_awp`` (R, in), ``B_awp`` (out, R), R = the
maximum AWP rank (4) and ``m`` in {0,1}^R the layer's rank mask (first ``rank`` entries 1). Rank-0 layers
are not perturbed at all. ``dW`` enters the forward through the LoRA parametrization's ``extra_delta``
hook, so no parameter is ever written: removing the hook restores the exact model.

Per training step: ``A_awp`` starts small and random, ``B_awp`` at zero (so dW = 0 and the first
ascent gradient is taken at the unperturbed weights); ``T_awp`` ascent steps on (A_awp, B_awp) maximise
the loss; after each step every layer's dW is projected onto ``||dW||_F <= radius`` (radius = rho*||W0||_F,
or rho when absolute).

Why the ascent step is normalised (``normalize_step=True``, the default): with B_awp = 0 the gradient
w.r.t. A_awp is ``diag(m) B_awp^T G = 0`` and the gradient w.r.t. B_awp is ``G A_awp^T diag(m)``, which is
tiny because A_awp is small. A plain step ``B += eta * grad`` then gives ``dW = eta * G A^T diag(m) A``, of
order eta * init_std^2 * ||G||: many orders of magnitude below the radius, i.e. no perturbation at all
(``normalize_step=False`` reproduces this; a test measures it). We therefore normalise the step per layer
like AWP (Wu et al. 2020) does: the factor step t*(gA, gB) is scaled so that its first-order change of dW,
``t * (gB m A + B m gA)``, has Frobenius norm eta*||W0||_F (eta absolute when the radius is absolute).
With B_awp = 0 that first step is exactly ``dW = eta*||W0|| * G P / ||G P||`` with ``P = A^T diag(m) A``:
the loss gradient seen through a random rank-r sketch, an ascent direction (<G, G P> >= 0). The default
eta = rho puts the first step on the boundary of the ball, as AWP's single step does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from grace_bench.errors import UserError
from grace_bench.models.lora import LoRAParametrization

_TINY = 1e-12


@dataclass(frozen=True)
class AWPSettings:
    """LAR-AWP knobs. ``step_size=None`` means eta = rho; ``radius`` is ``relative`` (rho*||W0||_F) or ``absolute``."""

    max_rank: int = 4
    rho: float = 5e-3
    radius: str = "relative"
    steps: int = 1
    step_size: float | None = None
    normalize_step: bool = True
    init_std: float = 1e-2

    @property
    def eta(self) -> float:
        return self.rho if self.step_size is None else float(self.step_size)

    def validate(self) -> None:
        """Raise ``UserError`` naming the bad field."""
        if self.max_rank < 1:
            raise UserError(f"AWP max rank must be >= 1, got {self.max_rank}; the paper uses 4")
        if not self.rho > 0:
            raise UserError(f"AWP radius rho must be > 0, got {self.rho}; the default is 5e-3 (relative)")
        if self.radius not in ("relative", "absolute"):
            raise UserError(f"AWP radius mode {self.radius!r} is unknown; use 'relative' or 'absolute'")
        if self.steps < 1:
            raise UserError(f"AWP ascent steps T_awp must be >= 1, got {self.steps}")
        if not self.eta > 0:
            raise UserError(f"AWP step size must be > 0, got {self.eta}; omit it to use rho")
        if not self.init_std > 0:
            raise UserError(f"AWP init std of A_awp must be > 0, got {self.init_std}")

    def to_dict(self) -> dict:
        return {
            "max_rank": self.max_rank, "rho": self.rho, "radius": self.radius, "steps": self.steps,
            "step_size": self.eta, "normalize_step": self.normalize_step, "init_std": self.init_std,
        }


def rank_mask(rank: int, max_rank: int, *, device=None, dtype=None) -> torch.Tensor:
    """The {0,1}^max_rank mask with the first ``rank`` entries set."""
    m = torch.zeros(max_rank, device=device, dtype=dtype)
    m[:rank] = 1
    return m


def lowrank_fro_norm(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``||u @ v||_F`` from the small Gram matrices (u: (out, k), v: (k, in)) without forming the product."""
    sq = ((u.T @ u) * (v @ v.T)).sum()
    return sq.clamp_min(0.0).sqrt()


class LowRankAWP:
    """The AWP branches of a set of LoRA layers: ranks, initialisation, ascent, projection, apply/remove.

    Typical use (what ``perturbed`` does)::

        awp.init_branches(generator)
        with awp.attached():
            awp.ascend(lambda: ce_at_current_weights())   # T_awp normalised ascent steps + projection
            awp.freeze()                                   # dW becomes a constant
            loss = ce_at_perturbed_weights()               # gradients reach LoRA A, B at W_pert
    """

    def __init__(self, layers: Mapping[str, LoRAParametrization], settings: AWPSettings | None = None) -> None:
        self.settings = settings or AWPSettings()
        self.settings.validate()
        if not layers:
            raise UserError("LAR-AWP needs LoRA layers; apply LoRA to the model first")
        self.layers = dict(layers)
        self.names = list(self.layers)
        self.ranks: dict[str, int] = {n: self.settings.max_rank for n in self.names}
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        self._radius: dict[str, torch.Tensor] = {}
        self._attached = False

    # ---- configuration -------------------------------------------------------------------------
    def set_ranks(self, ranks: Mapping[str, int]) -> None:
        """Set per-layer AWP ranks (0..max_rank); layers not named keep their rank."""
        for name, r in ranks.items():
            if name not in self.layers:
                raise ValueError(f"unknown LAR-AWP layer {name!r}")
            if not 0 <= int(r) <= self.settings.max_rank:
                raise ValueError(f"AWP rank {r} of {name} is outside 0..{self.settings.max_rank}")
            self.ranks[name] = int(r)
        if self._a:
            self._a, self._b = {}, {}  # masks changed: branches must be re-initialised

    def active(self) -> list[str]:
        """Layers with rank > 0 (the perturbed ones)."""
        return [n for n in self.names if self.ranks[n] > 0]

    def radius(self, name: str) -> torch.Tensor:
        """``rho * ||W0||_F`` (relative) or ``rho`` (absolute) for one layer; W0 is frozen, so it is cached."""
        if name not in self._radius:
            w0 = self.layers[name].base_weight().detach()
            if self.settings.radius == "relative":
                self._radius[name] = torch.linalg.matrix_norm(w0.float()) * self.settings.rho
            else:
                self._radius[name] = torch.full((), self.settings.rho, device=w0.device)
        return self._radius[name]

    def _step_target(self, name: str) -> torch.Tensor:
        return self.radius(name) * (self.settings.eta / self.settings.rho)

    # ---- state of one step ----------------------------------------------------------------------
    def init_branches(self, generator: torch.Generator | None = None) -> None:
        """A_awp ~ N(0, init_std^2 / in) (so rows have norm ~init_std), B_awp = 0, both requiring grad."""
        self._a, self._b = {}, {}
        r_max = self.settings.max_rank
        for name in self.active():
            w0 = self.layers[name].base_weight()
            out_f, in_f = w0.shape
            gen_device = generator.device if generator is not None else w0.device
            a = torch.randn(r_max, in_f, generator=generator, device=gen_device)
            a = a * (self.settings.init_std / math.sqrt(in_f))
            self._a[name] = a.to(device=w0.device, dtype=w0.dtype).requires_grad_(True)
            self._b[name] = torch.zeros(out_f, r_max, device=w0.device, dtype=w0.dtype, requires_grad=True)

    def branch_tensors(self) -> list[torch.Tensor]:
        """``[A_awp..., B_awp...]`` of the active layers (the ascent variables)."""
        return [self._a[n] for n in self._a] + [self._b[n] for n in self._b]

    def delta(self, name: str) -> torch.Tensor:
        """``B_awp @ diag(m) @ A_awp`` of one layer."""
        a, b = self._a[name], self._b[name]
        m = rank_mask(self.ranks[name], self.settings.max_rank, device=b.device, dtype=b.dtype)
        return (b * m) @ a

    def delta_norms(self) -> dict[str, torch.Tensor]:
        """``||dW||_F`` per active layer (device tensors; no host sync)."""
        out = {}
        for name in self._a:
            m = rank_mask(self.ranks[name], self.settings.max_rank, device=self._b[name].device,
                          dtype=self._b[name].dtype)
            out[name] = lowrank_fro_norm((self._b[name] * m).detach().float(), self._a[name].detach().float())
        return out

    @contextmanager
    def attached(self) -> Iterator[LowRankAWP]:
        """Route every active layer's weight through ``W + dW`` (reading the current branches on each forward)."""
        if self._attached:
            raise RuntimeError("LAR-AWP branches are already attached")
        if not self._a and self.active():
            raise RuntimeError("call init_branches() before attaching the AWP branches")
        previous = {n: self.layers[n].extra_delta for n in self._a}
        for name in self._a:
            if previous[name] is not None:
                raise RuntimeError(f"layer {name} already has an extra_delta hook")
            self.layers[name].extra_delta = self._make_hook(name)
        self._attached = True
        try:
            yield self
        finally:
            for name, prev in previous.items():
                self.layers[name].extra_delta = prev
            self._attached = False

    def _make_hook(self, name: str) -> Callable[[], torch.Tensor]:
        return lambda: self.delta(name)

    def ascent_step(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One ascent step from gradients ordered like ``branch_tensors()``, then projection onto the ball.

        Updates are out of place, so graphs that used the previous branches stay valid.
        """
        names = list(self._a)
        if len(grads) != 2 * len(names):
            raise ValueError(f"expected {2 * len(names)} gradients, got {len(grads)}")
        s = self.settings
        for i, name in enumerate(names):
            a, b = self._a[name].detach(), self._b[name].detach()
            ga = grads[i] if grads[i] is not None else torch.zeros_like(a)
            gb = grads[len(names) + i] if grads[len(names) + i] is not None else torch.zeros_like(b)
            m = rank_mask(self.ranks[name], s.max_rank, device=b.device, dtype=b.dtype)
            ga, gb = ga.detach() * m[:, None], gb.detach() * m
            if s.normalize_step:
                u = torch.cat([gb, b * m], dim=1).float()
                v = torch.cat([a, ga], dim=0).float()
                first_order = lowrank_fro_norm(u, v)
                t = torch.where(first_order > _TINY, self._step_target(name) / first_order.clamp_min(_TINY),
                                torch.zeros_like(first_order)).to(a.dtype)
            else:
                t = torch.tensor(s.eta, device=a.device, dtype=a.dtype)
            a_new, b_new = a + t * ga, b + t * gb
            norm = lowrank_fro_norm((b_new * m).float(), a_new.float())
            shrink = (self.radius(name) / norm.clamp_min(_TINY)).clamp(max=1.0).sqrt().to(a.dtype)
            self._a[name] = (a_new * shrink).requires_grad_(True)
            self._b[name] = (b_new * shrink).requires_grad_(True)

    def ascend(
        self, loss_fn: Callable[[], torch.Tensor], *, first_grads: Sequence[torch.Tensor | None] | None = None
    ) -> None:
        """Run T_awp ascent steps maximising ``loss_fn()`` (evaluated with the branches attached).

        ``first_grads`` may supply the gradients of the first step (taken at dW = 0, i.e. at the unperturbed
        weights), e.g. from a forward the caller already ran with the branches attached; it then saves one
        forward pass. Only the branch tensors receive gradients; parameter ``.grad`` is left untouched.
        """
        if not self._attached:
            raise RuntimeError("ascend() needs the AWP branches attached (use `with awp.attached():`)")
        if not self._a:  # every layer has rank 0: nothing to perturb
            return
        for step in range(self.settings.steps):
            if step == 0 and first_grads is not None:
                grads = first_grads
            else:
                loss = loss_fn()
                grads = torch.autograd.grad(loss, self.branch_tensors(), allow_unused=True)
            self.ascent_step(grads)

    def freeze(self) -> None:
        """Make dW a constant (AWP style): later losses differentiate only w.r.t. the LoRA parameters."""
        self._a = {n: t.detach() for n, t in self._a.items()}
        self._b = {n: t.detach() for n, t in self._b.items()}

    def clear(self) -> None:
        """Drop the branch tensors of this step."""
        self._a, self._b = {}, {}

    @contextmanager
    def perturbed(
        self, loss_fn: Callable[[], torch.Tensor], *, generator: torch.Generator | None = None
    ) -> Iterator[LowRankAWP]:
        """Initialise, ascend on ``loss_fn``, freeze, and keep W_pert applied inside the block; restore on exit."""
        self.init_branches(generator)
        try:
            with self.attached():
                self.ascend(loss_fn)
                self.freeze()
                yield self
        finally:
            self.clear()
