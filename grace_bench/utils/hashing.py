"""Stable hashes of configs and text lists (for result keys and caches)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def config_hash(config: Any, length: int = 12) -> str:
    """sha256 of the canonical JSON of ``config``, truncated."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def text_list_hash(items: Sequence[str], length: int = 12) -> str:
    """sha256 of a list of strings (order matters), truncated."""
    return config_hash(list(items), length)
