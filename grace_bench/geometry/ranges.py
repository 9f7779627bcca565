"""Coordinate lists written as text: ``START:STOP:NUM`` (inclusive, NUM points) or a comma list. No torch."""

from __future__ import annotations

import math

from grace_bench.errors import UserError


def parse_range(text: str, name: str = "range") -> list[float]:
    """``"start:stop:num"`` or ``"a,b,c"`` -> coordinates; ``UserError`` naming ``name`` when malformed."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            n = int(num)
            if n < 1:
                raise ValueError
            import numpy as np

            values = np.linspace(float(start), float(stop), n).tolist()
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{name} '{text}' is malformed; use START:STOP:NUM (e.g. -1:1:21) or a comma list") from None
    if any(not math.isfinite(v) for v in values):
        raise UserError(f"{name} '{text}' holds a non-finite number; use finite coordinates")
    return values
