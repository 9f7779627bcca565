"""Thread settings and a description of the machine a number was computed on (threads, CPU, GPU, torch)."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

from grace_bench.errors import UserError

THREADS_ENV = "GRACE_BENCH_THREADS"
THREADS_HELP = (f"CPU threads for torch (default: ${THREADS_ENV} if set, else torch's default, one per core); "
                "on a shared or small machine 1 is often much faster and gives the same numbers")


def resolve_threads(threads: int | None) -> int | None:
    """The thread count to use: ``threads`` if given, else ``$GRACE_BENCH_THREADS``, else None (torch default)."""
    source = "--threads"
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return None
        source = f"${THREADS_ENV}"
        try:
            threads = int(raw)
        except ValueError:
            raise UserError(f"{source}={raw!r} is not a whole number; set it to a thread count like 1 or 4, "
                            "or unset it") from None
    if threads < 1:
        raise UserError(f"{source} must be a positive number of threads, got {threads}; use e.g. 1 or 4")
    return threads


def apply_threads(threads: int | None) -> int | None:
    """Set torch's intra-op (and, if still possible, inter-op) thread counts; returns the count applied or None."""
    n = resolve_threads(threads)
    if n is None:
        return None
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable once, before any inter-op parallel work; intra-op threads matter most
        pass
    return n


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def runtime_info() -> dict[str, Any]:
    """Threads, CPU model, CPU count, CUDA device (if any) and torch version, for stamping into results."""
    import torch

    info: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.cuda.current_device())
        info["cuda"] = torch.version.cuda
    return info
