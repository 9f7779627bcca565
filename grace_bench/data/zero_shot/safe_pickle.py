"""A restricted reader for CIFAR's pickled python batches: numpy arrays, lists, dicts, strings and numbers only.

CIFAR's ``cifar-10-batches-py`` / ``cifar-100-python`` files are Python pickles of a dict of a uint8 array and
lists. Plain ``pickle.load`` would run any callable a file names; this unpickler resolves only the two globals
that rebuild a numpy array (``numpy.core.multiarray._reconstruct`` and ``numpy.ndarray``), ``numpy.dtype`` for
plain numeric types and ``_codecs.encode`` for latin-1 text (how Python 3's protocol-2 pickles store bytes). Any
other global (``os.system``, ``builtins.eval``, object arrays, ...) raises a ``UserError`` before anything runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from grace_bench.errors import UserError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 1.26
    from numpy.core.multiarray import _reconstruct

_RECONSTRUCT_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def _numeric_dtype(obj, align=False, copy=False):
    """``numpy.dtype`` limited to numeric kinds (an object dtype would let array data run unpickling code)."""
    dtype = np.dtype(obj, align, copy)
    if dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"dtype {dtype} is not a plain numeric type")
    return dtype


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3's protocol-2 pickles use it to store bytes; latin-1 text only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "_codecs" and name == "encode":
            return _latin1_bytes
        if module in _RECONSTRUCT_MODULES and name == "_reconstruct":
            return _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return _numeric_dtype
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_array_pickle(path: Path, fix: str) -> dict:
    """The dict pickled in ``path`` (keys decoded as text), read with the restricted unpickler."""
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{path} is not a CIFAR batch of arrays and lists ({type(exc).__name__}: {exc}); "
                        f"it was refused without running it; {fix}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not a CIFAR batch dict; {fix}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}
