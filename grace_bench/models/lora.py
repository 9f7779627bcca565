"""LoRA as weight parametrizations (``torch.nn.utils.parametrize``).

Every adapted weight computes ``W = W0 + (alpha / r) * B @ A`` (+ an optional extra term, see below),
with ``A`` (r, in) Kaiming-uniform and ``B`` (out, r) zero, so training starts exactly at ``W0``.

Why parametrizations and not wrapper modules: OpenCLIP's attention is ``nn.MultiheadAttention``, which
hands ``in_proj_weight`` and ``out_proj.weight`` straight to ``F.multi_head_attention_forward``; a
wrapper around ``out_proj`` would never be called. A parametrization changes what the attribute
*returns*, so every code path (module call, functional call, fast path) sees the adapted weight.

Dropout (weight-space formulation). Standard LoRA drops the *input* of the low-rank branch,
``B A dropout(x)``, with a fresh mask per token. A weight-space adapter cannot see tokens, so we
drop input features of ``A`` instead: ``dW = (alpha/r) * B @ (A * m / (1 - p))`` with
``m ~ Bernoulli(1 - p)`` over the ``in`` columns, drawn once each time the weight is materialised
(i.e. once per forward pass). This is exactly LoRA's input dropout with one mask shared by every
token and every sample of that forward pass. It is active only in ``train()`` mode; the default is
``p = 0`` (the GRACE paper states no LoRA dropout).

Per-slice adapters (AdvCLIP-LoRA). OpenCLIP packs the q, k and v projections of a block into one
``attn.in_proj_weight`` of shape (3D, D). With ``split_qkv=True`` that weight gets one rank-r adapter per
slice, ``dW = scale * [B_q A_q; B_k A_k; B_v A_v]`` (``lora_A`` (3, r, D), ``lora_B`` (3, D, r)), exactly
separate LoRA layers on separate q, k, v linears; each slice draws its own dropout mask.

Scaling: ``alpha / r`` (``scaling="standard"``) or ``alpha / sqrt(r)`` (``scaling="sqrt"``, rsLoRA's rule,
AdvCLIP-LoRA's code).

Extra additive term (used by GRACE's LAR-AWP): set ``layer.extra_delta`` to a zero-argument callable
returning a tensor shaped like the weight; while it is set, ``W = W0 + dW_lora + extra_delta()``.
It is a plain attribute (not a submodule), so it never enters ``state_dict()``; ``merge()`` ignores it.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from grace_bench.errors import UserError

# Short target names -> parameter-name suffixes inside an OpenCLIP residual block.
TARGET_SUFFIXES: dict[str, str] = {
    "attn_in": "attn.in_proj_weight",
    "attn_out": "attn.out_proj.weight",
    "mlp_fc": "mlp.c_fc.weight",
    "mlp_proj": "mlp.c_proj.weight",
}
# Tower name -> prefix of the residual blocks of that tower in an OpenCLIP ``CLIP`` model.
TOWER_PREFIXES: dict[str, str] = {
    "vision": "visual.transformer.resblocks.",
    "text": "transformer.resblocks.",
}
DEFAULT_TARGETS: tuple[str, ...] = ("attn_in", "attn_out", "mlp_fc", "mlp_proj")
# The packed q/k/v projection that ``split_qkv`` cuts into three slices, and the scaling rules.
QKV_SUFFIX = "attn.in_proj_weight"
SCALINGS: tuple[str, ...] = ("standard", "sqrt")


@dataclass
class LoRAConfig:
    """Where and how to adapt. ``alpha=None`` means ``2 * rank`` (the GRACE paper's LoRA alpha).

    ``targets`` holds short names (``attn_in``, ``attn_out``, ``mlp_fc``, ``mlp_proj``) applied to every
    residual block of each tower in ``towers`` (``vision``, ``text``), and/or fnmatch patterns over full
    parameter names (anything containing ``.`` or ``*``, e.g. ``visual.transformer.resblocks.11.*``),
    which are matched against all 2-D weights regardless of ``towers``.
    """

    rank: int = 64
    alpha: float | None = None
    dropout: float = 0.0
    targets: Sequence[str] = DEFAULT_TARGETS
    towers: Sequence[str] = ("vision",)
    split_qkv: bool = False
    scaling: str = "standard"
    extra: dict = field(default_factory=dict)

    @property
    def scale(self) -> float:
        denominator = math.sqrt(self.rank) if self.scaling == "sqrt" else self.rank
        return float(self.resolved_alpha) / denominator

    @property
    def resolved_alpha(self) -> float:
        return float(2 * self.rank if self.alpha is None else self.alpha)

    def validate(self) -> None:
        """Raise ``UserError`` naming the bad field."""
        if not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"lora.rank must be a positive integer, got {self.rank!r}; set e.g. --lora-rank 64")
        if self.alpha is not None and not self.alpha > 0:
            raise UserError(f"lora.alpha must be > 0, got {self.alpha!r}; omit it for the default 2*rank")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        for t in self.targets:
            if t not in TARGET_SUFFIXES and "." not in t and "*" not in t:
                raise UserError(
                    f"lora.targets: unknown target {t!r}; use {', '.join(TARGET_SUFFIXES)} or a parameter-name pattern"
                )
        for tw in self.towers:
            if tw not in TOWER_PREFIXES:
                raise UserError(f"lora.towers: unknown tower {tw!r}; use 'vision' and/or 'text'")
        if self.scaling not in SCALINGS:
            raise UserError(f"lora.scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")

    def to_dict(self) -> dict:
        return {
            "rank": self.rank, "alpha": self.resolved_alpha, "dropout": self.dropout,
            "targets": list(self.targets), "towers": list(self.towers), "split_qkv": bool(self.split_qkv),
            "scaling": self.scaling, "scale": self.scale,
        }


class LoRAParametrization(nn.Module):
    """``W0 -> W0 + scale * B @ A (+ extra_delta())``. Holds the trainable factors ``lora_A``, ``lora_B``.

    Attributes available to other components (e.g. GRACE): ``rank``, ``scale``, ``dropout``,
    ``lora_A`` (r, in), ``lora_B`` (out, r), ``extra_delta`` (callable or None), ``name`` (full parameter
    name in the model), ``base_weight()`` (the frozen ``W0``), ``lora_delta()`` (the current dW, no dropout).
    """

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float, dropout: float = 0.0,
                 *, slices: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        if slices < 1 or out_features % slices:
            raise ValueError(f"cannot cut {out_features} output rows into {slices} equal slices")
        self.rank = rank
        self.scale = float(scale)
        self.dropout = float(dropout)
        self.slices = int(slices)
        if slices == 1:
            self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
            self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            self.lora_A = nn.Parameter(torch.empty(slices, rank, in_features, device=device, dtype=dtype))
            self.lora_B = nn.Parameter(torch.zeros(slices, out_features // slices, rank, device=device, dtype=dtype))
            for a in self.lora_A:  # each slice initialised like its own (r, in) factor
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.extra_delta: Callable[[], torch.Tensor] | None = None
        self.name: str = ""
        # Set by ``apply_lora``; kept out of ``_modules`` so it is not a child module (no double counting).
        object.__setattr__(self, "_owner", None)

    def lora_delta(self, *, dropout: bool = False) -> torch.Tensor:
        """``scale * B @ A`` (slices stacked by rows); with ``dropout=True`` (p > 0) input columns of A are dropped."""
        a = self.lora_A
        if dropout and self.dropout > 0.0:
            mask_shape = (a.shape[-1],) if self.slices == 1 else (self.slices, 1, a.shape[-1])
            keep = torch.empty(mask_shape, device=a.device, dtype=a.dtype).bernoulli_(1.0 - self.dropout)
            a = a * (keep / (1.0 - self.dropout))
        delta = self.lora_B @ a
        if self.slices > 1:
            delta = delta.reshape(-1, a.shape[-1])
        return self.scale * delta

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight + self.lora_delta(dropout=self.training).to(weight.dtype)
        if self.extra_delta is not None:
            w = w + self.extra_delta().to(weight.dtype)
        return w

    def base_weight(self) -> torch.Tensor:
        """The frozen original weight ``W0`` (a Parameter with ``requires_grad=False``)."""
        owner = self._owner
        if owner is None:
            raise RuntimeError("this LoRAParametrization is not registered on a module")
        return owner.original

    def merged_weight(self) -> torch.Tensor:
        """``W0 + scale * B @ A`` without dropout and without ``extra_delta``."""
        w0 = self.base_weight()
        return (w0 + self.lora_delta().to(w0.dtype)).detach()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}, dropout={self.dropout:g}, slices={self.slices}"


def _target_names(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Full names of the 2-D parameters selected by ``config`` (in ``named_parameters`` order)."""
    names = []
    short = [TARGET_SUFFIXES[t] for t in config.targets if t in TARGET_SUFFIXES]
    patterns = [t for t in config.targets if t not in TARGET_SUFFIXES]
    prefixes = [TOWER_PREFIXES[t] for t in config.towers]
    for name, p in model.named_parameters():
        if p.ndim != 2:
            continue
        by_short = any(name.startswith(pre) and name.endswith("." + suf) for pre in prefixes for suf in short)
        by_pattern = any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        if by_short or by_pattern:
            names.append(name)
    return names


def apply_lora(model: nn.Module, config: LoRAConfig) -> dict[str, LoRAParametrization]:
    """Freeze the selected weights and register a LoRA parametrization on each; return ``lora_layers``.

    Only the base weights of adapted layers are frozen here; the caller decides what else trains.
    """
    config.validate()
    if lora_layers(model):
        raise UserError("the model already has LoRA adapters; merge them first (grace_bench.models.lora.merge)")
    names = _target_names(model, config)
    if not names:
        raise UserError(
            f"lora.targets {list(config.targets)} on towers {list(config.towers)} matched no 2-D weight of this model"
        )
    for name in names:
        module_name, _, tensor_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        weight = getattr(module, tensor_name)
        weight.requires_grad_(False)
        out_f, in_f = weight.shape
        if config.rank > min(out_f, in_f):
            raise UserError(f"lora.rank {config.rank} exceeds the smallest dimension {min(out_f, in_f)} of {name}")
        slices = 3 if config.split_qkv and name.endswith("." + QKV_SUFFIX) else 1
        p = LoRAParametrization(out_f, in_f, config.rank, config.scale, config.dropout, slices=slices,
                                device=weight.device, dtype=weight.dtype)
        p.name = name
        parametrize.register_parametrization(module, tensor_name, p, unsafe=True)
        plist = module.parametrizations[tensor_name]
        plist.original.requires_grad_(False)
        object.__setattr__(p, "_owner", plist)
    return lora_layers(model)


def lora_layers(model: nn.Module) -> dict[str, LoRAParametrization]:
    """``{full parameter name: LoRAParametrization}`` for every adapted weight (e.g. ``...attn.in_proj_weight``)."""
    out: dict[str, LoRAParametrization] = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            for p in plist:
                if isinstance(p, LoRAParametrization):
                    if p._owner is not plist:  # e.g. after deepcopy without our owner pointer
                        object.__setattr__(p, "_owner", plist)
                    out[f"{module_name}.{tensor_name}" if module_name else tensor_name] = p
    return out


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA factors (A then B of each layer, in layer order)."""
    return [t for p in lora_layers(model).values() for t in (p.lora_A, p.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<name>.lora_A": A, "<name>.lora_B": B}`` for every adapted weight (detached)."""
    sd = {}
    for name, p in lora_layers(model).items():
        sd[f"{name}.lora_A"] = p.lora_A.detach()
        sd[f"{name}.lora_B"] = p.lora_B.detach()
    return sd


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy factors saved by ``lora_state_dict`` into an adapted model (strict: names and shapes must match)."""
    layers = lora_layers(model)
    expected = {f"{n}.lora_{x}" for n in layers for x in "AB"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(f"LoRA state does not match the model (missing {missing[:3]}, unexpected {extra[:3]}); "
                        "use the same lora rank/targets/towers as the saved run")
    for name, p in layers.items():
        p.lora_A.copy_(state[f"{name}.lora_A"])
        p.lora_B.copy_(state[f"{name}.lora_B"])


@torch.no_grad()
def merge(model: nn.Module) -> dict[str, torch.Tensor]:
    """A plain OpenCLIP state dict with every adapter folded in (``W0 + scale*B@A``); the model is unchanged.

    Dropout and ``extra_delta`` are not applied. Keys are exactly those of the un-adapted model.
    """
    layers = lora_layers(model)
    merged_by_name = {name: p.merged_weight() for name, p in layers.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." not in key and not key.startswith("parametrizations."):
            out[key] = value.detach()
            continue
        head, _, rest = key.partition("parametrizations.")
        tensor_name, _, tail = rest.partition(".")
        if tail == "original":
            name = f"{head}{tensor_name}"
            out[name] = merged_by_name[name] if name in merged_by_name else value.detach()
        # other keys (the factors lora_A/lora_B) are dropped
    return out


@torch.no_grad()
def remove_lora(model: nn.Module, *, merge_weights: bool = True) -> None:
    """Remove every LoRA parametrization in place, folding the adapters in (or discarding them)."""
    for name, p in lora_layers(model).items():
        module_name, _, tensor_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        new = p.merged_weight() if merge_weights else p.base_weight().detach().clone()
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        getattr(module, tensor_name).data.copy_(new)


def count_parameters(params: Iterable[torch.Tensor]) -> int:
    """Number of scalar entries in ``params``."""
    return sum(int(p.numel()) for p in params)
