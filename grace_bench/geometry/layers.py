"""Layer grouping of flat parameter vectors: which layer a parameter belongs to, and per-layer sums."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from grace_bench.errors import UserError


def layer_key(name: str, granularity: str = "block") -> str:
    """The layer a parameter belongs to: ``block`` (transformer block, else module), ``module`` or ``param``."""
    if granularity == "param":
        return name
    if granularity == "block":
        match = re.match(r"(.*resblocks\.\d+)\.", name)
        if match:
            return match.group(1)
    if granularity in ("block", "module"):
        for suffix in (".weight", ".bias", "_weight", "_bias"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name
    raise UserError(f"granularity must be block, module or param, got '{granularity}'")


def layer_groups(slices: Mapping[str, slice], granularity: str = "block") -> dict[str, list[slice]]:
    """Parameter slices of a flat vector grouped by layer, in the order the layers first appear."""
    groups: dict[str, list[slice]] = {}
    for name, sl in slices.items():
        groups.setdefault(layer_key(name, granularity), []).append(sl)
    return groups


def group_sizes(groups: Mapping[str, list[slice]]) -> dict[str, int]:
    """Number of coordinates in each group."""
    return {key: int(sum(sl.stop - sl.start for sl in sls)) for key, sls in groups.items()}


def segment_ids(dim: int, groups: Mapping[str, list[slice]], device=None) -> torch.Tensor:
    """For every coordinate of a flat vector, the index of its group (for ``index_add_``)."""
    seg = torch.empty(dim, dtype=torch.long, device=device)
    for gid, sls in enumerate(groups.values()):
        for sl in sls:
            seg[sl] = gid
    return seg


def group_sums(values: torch.Tensor, segment: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Sum of a flat vector's entries within each group (``segment`` from ``segment_ids``)."""
    return torch.zeros(num_groups, device=values.device, dtype=values.dtype).index_add_(0, segment, values)
