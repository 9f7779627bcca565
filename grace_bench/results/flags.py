"""Per-image correct flags in a result file, stored compactly: ``np.packbits`` of the flags, base64-encoded.

A clean result holds ``metrics.top1_flags = {"encoding": "packbits-base64", "n": N, "bits": "..."}``: flag ``i``
says whether image ``i`` of the evaluated indices (in index order) was classified correctly. An adversarial
result holds plain lists (``robust_flags``, ``clean_flags``, ``indices``). Results written before the flags
existed have none; readers then get ``None`` and say "no per-image data".
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from grace_bench.errors import UserError

ENCODING = "packbits-base64"


def pack_flags(flags: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """``flags`` as a JSON object: the count and the base64 of their packed bits (big-endian bit order)."""
    arr = np.asarray(flags, dtype=bool).ravel()
    return {"encoding": ENCODING, "n": int(arr.size), "bits": base64.b64encode(np.packbits(arr)).decode("ascii")}


def unpack_flags(packed: Any, where: str = "flags") -> np.ndarray | None:
    """The boolean flags of ``pack_flags``'s object; ``None`` when ``packed`` is None (an older file).

    A malformed object (wrong encoding, bad base64, too few bits) is a one-line UserError naming ``where``.
    """
    if packed is None:
        return None
    fix = "delete the result file and re-run grace-bench eval to rewrite it"
    if not isinstance(packed, Mapping) or packed.get("encoding") != ENCODING:
        raise UserError(f"{where}: per-image flags are not a {ENCODING} object; {fix}")
    n = packed.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or not isinstance(packed.get("bits"), str):
        raise UserError(f"{where}: per-image flags need an integer 'n' and a 'bits' string; {fix}")
    try:
        raw = base64.b64decode(packed["bits"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise UserError(f"{where}: per-image flags are not valid base64; {fix}") from None
    if len(raw) != (n + 7) // 8:
        raise UserError(f"{where}: per-image flags hold {len(raw)} bytes, not the {(n + 7) // 8} that n={n} needs; "
                        f"{fix}")
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)


def flag_list(values: Any, where: str = "flags") -> np.ndarray | None:
    """A JSON list of booleans (or 0/1) as a boolean array; ``None`` when absent, UserError when malformed."""
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (bool, int)) and v in (0, 1) for v in values):
        raise UserError(f"{where}: per-image flags must be a list of true/false; delete the result file and re-run "
                        "grace-bench eval to rewrite it")
    return np.asarray(values, dtype=bool)
