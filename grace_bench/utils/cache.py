"""The grace-bench cache folder (rebuilt micro-CLIP weights, zero-shot heads, generated micro datasets)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GRACE_BENCH_CACHE"


def cache_dir() -> Path:
    """``$GRACE_BENCH_CACHE`` if set, else the user cache dir (e.g. ``~/.cache/grace-bench``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("grace-bench"))
