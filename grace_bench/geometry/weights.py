"""Relative weight drift ``||theta - theta0||_2 / ||theta0||_2``: overall, per tower and per layer.

Only floating-point entries present in both state dicts with equal shapes are compared; entries
missing from either side are listed in the result. Towers: ``vision`` (``visual.*``), ``text``
(OpenCLIP's text transformer, token/positional embeddings, ``ln_final``, ``text_projection``) and
``other`` (e.g. ``logit_scale``). Layers: a transformer block (``...resblocks.N``) or the entry's module.
"""

from __future__ import annotations

import math
import re

import torch

from grace_bench.errors import UserError

_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.", "text_projection", "positional_embedding",
                  "text.")


def _strip(name: str) -> str:
    for prefix in ("module.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def tower_of(name: str) -> str:
    """``vision``, ``text`` or ``other`` for an OpenCLIP state-dict key."""
    name = _strip(name)
    if name.startswith("visual."):
        return "vision"
    if name.startswith(_TEXT_PREFIXES):
        return "text"
    return "other"


def layer_of(name: str) -> str:
    """The transformer block (``...resblocks.N``) or module a state-dict key belongs to."""
    name = _strip(name)
    match = re.match(r"(.*resblocks\.\d+)\.", name)
    if match:
        return match.group(1)
    return name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name


def _entry(diff_sq: float, ref_sq: float, numel: int) -> dict:
    return {
        "relative": math.sqrt(diff_sq) / math.sqrt(ref_sq) if ref_sq > 0 else (0.0 if diff_sq == 0 else math.inf),
        "abs": math.sqrt(diff_sq),
        "ref_norm": math.sqrt(ref_sq),
        "numel": numel,
    }


@torch.no_grad()
def weight_drift(state: dict[str, torch.Tensor], ref_state: dict[str, torch.Tensor]) -> dict:
    """Relative L2 drift of ``state`` from ``ref_state``: ``overall``, ``towers``, ``layers`` (in the network
    order of ``state``) and the skipped keys."""
    a = {_strip(k): v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    b = {_strip(k): v for k, v in ref_state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    common = [k for k in a if k in b and a[k].shape == b[k].shape]  # state-dict (network) order
    if not common:
        raise UserError("the checkpoint and the reference share no weights of equal shape; compare the same "
                        "architecture")
    sums: dict[str, dict[str, list[float]]] = {"towers": {}, "layers": {}}
    total = [0.0, 0.0, 0]
    for k in common:
        x, y = a[k].double().cpu(), b[k].double().cpu()
        d2 = float((x - y).pow(2).sum())
        r2 = float(y.pow(2).sum())
        n = y.numel()
        total[0] += d2
        total[1] += r2
        total[2] += n
        for kind, key in (("towers", tower_of(k)), ("layers", layer_of(k))):
            slot = sums[kind].setdefault(key, [0.0, 0.0, 0])
            slot[0] += d2
            slot[1] += r2
            slot[2] += n
    return {
        "definition": "||theta - theta0||_2 / ||theta0||_2 over floating-point state-dict entries",
        "overall": _entry(*total),
        "towers": {k: _entry(*v) for k, v in sorted(sums["towers"].items())},
        "layers": {k: _entry(*v) for k, v in sums["layers"].items()},
        "num_compared": len(common),
        "missing_in_checkpoint": sorted(b.keys() - a.keys()),
        "missing_in_reference": sorted(a.keys() - b.keys()),
        "shape_mismatch": sorted(k for k in a.keys() & b.keys() if a[k].shape != b[k].shape),
    }
