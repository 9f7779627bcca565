"""Reading NPZ archives that the tool wrote earlier, as untrusted input: no pickle, one-line errors."""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from grace_bench.errors import UserError

# what np.load raises on an empty, truncated, garbled or non-NPZ file (pickled data is a ValueError)
NPZ_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def load_npz(path: str | os.PathLike, *, fix: str) -> dict[str, np.ndarray]:
    """Every array of the NPZ at ``path``; a corrupt file raises a ``UserError`` naming it and ``fix``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except FileNotFoundError as exc:
        raise UserError(f"{path} does not exist; {fix}") from exc
    except NPZ_READ_ERRORS as exc:
        raise UserError(f"{path} is not a readable NPZ archive ({type(exc).__name__}: {_first_line(exc)}); "
                        f"{fix}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:120] if text else "no details"
