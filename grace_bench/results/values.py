"""Small value helpers every reader of result files shares: dotted lookups, tolerant floats, the harmonic mean."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

_PART = re.compile(r"([^\[\]]+)((?:\[\d+\])*)")


def lookup(obj: Any, dotted: str) -> Any:
    """Follow ``a.b[0].c`` through dicts and lists; ``None`` when any step is missing."""
    cur = obj
    for part in dotted.split("."):
        m = _PART.fullmatch(part)
        if m is None:
            return None
        name, idx = m.group(1), m.group(2)
        if not isinstance(cur, Mapping) or name not in cur:
            return None
        cur = cur[name]
        for i in re.findall(r"\[(\d+)\]", idx):
            if not isinstance(cur, (list, tuple)) or int(i) >= len(cur):
                return None
            cur = cur[int(i)]
    return cur


def as_float(value: Any) -> float | None:
    """A finite float from a number, or from a dict's ``mean``/``value``; otherwise ``None``."""
    if isinstance(value, Mapping):
        value = value.get("mean", value.get("value"))
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def harmonic_mean(values: Iterable[float | None]) -> float | None:
    """``n / sum(1/v)`` of fractions, the paper's HM.

    0.0 when any value is 0 or below (one useless axis makes the method useless); ``None`` when the list is
    empty or any value is missing or not finite (no made-up number).
    """
    vals = [as_float(v) for v in values]
    if not vals or any(v is None for v in vals):
        return None
    if any(v <= 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)
