"""Fixed attack chunks: the unit of work, of randomness and of resumption.

The attacked subset is cut, in order, into chunks of ``chunk_size`` examples (the last may be shorter).
``chunk_size`` is part of the protocol (recorded in every result config, never derived from the batch size
or the number of processes). Each chunk is attacked on its own, seeded by ``chunk_seed(seed, index)``, so
its flags depend only on its examples, the attack and that seed: chunks can run in any order, on any
process, and a killed run resumes at the first unfinished (chunk, sub-attack) step with identical results.
Per-chunk state files live in one folder per run; ``clear_state`` removes it once the result is written.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from grace_bench.errors import UserError

DEFAULT_CHUNK_SIZE = 50
DEFAULT_SEED = 0
SEED_DERIVATION = "sha256('{seed}:{chunk}')[:8] little-endian, 63 bits, per chunk"
STATE_PREFIXES = ("autoattack-", "pgd-")


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk`` (see ``SEED_DERIVATION``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{chunk}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in chunks of ``chunk_size``."""
    if chunk_size < 1:
        raise UserError(f"attack chunk size must be >= 1, got {chunk_size}; pass chunk_size=50 (the default)")
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def clear_state(state_dir: str | Path) -> None:
    """Remove this package's attack state under ``state_dir`` (then the folder itself if it is empty)."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        return
    for path in state_dir.iterdir():
        if not path.name.startswith(STATE_PREFIXES):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass  # something else lives there
