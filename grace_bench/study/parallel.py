"""Run independent study jobs (fine-tuning runs, evaluations) in ``--jobs N`` worker processes.

Each worker is a fresh process with torch's intra-op threads set to the caller's count (``--threads`` is per
job, ``--jobs`` is how many run at once), so a job computes the same numbers whatever ``--jobs`` is. Results
come back in submission order; the first failure is raised after the running jobs finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

MAX_AUTO_JOBS = 4  # each job holds its own copy of the model, data and torch (~1 GB on micro)
T = TypeVar("T")
R = TypeVar("R")


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel kill this worker when the process that started it dies (even by SIGKILL), so a killed
    study leaves no orphan still training into its folders; the killed work resumes from its last atomic write."""
    import ctypes
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _init_worker(threads: int, parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process
        pass


def run_jobs(fn: Callable[[T], R], items: Sequence[T], jobs: int = 1) -> Iterator[R]:
    """``fn(item)`` for every item, in order; with ``jobs > 1`` in that many worker processes (``fn`` and the
    items must pickle: a module-level function and plain data)."""
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    import torch

    ctx = multiprocessing.get_context("spawn")  # no forked torch state; same start on every platform
    with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=ctx, initializer=_init_worker,
                             initargs=(torch.get_num_threads(), os.getpid())) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def check_jobs(jobs: Any) -> int:
    """``jobs`` as a positive int, or a one-line UserError."""
    from grace_bench.errors import UserError

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs must be a positive number of parallel runs, got {jobs!r}; use e.g. 1 or 2")
    return jobs


def resolve_jobs(jobs: int | None, threads: int | None, device: str = "cpu") -> int:
    """The jobs to run at once: ``jobs`` when given, else 1 on an accelerator or under torchrun and, on CPU, as many
    as fit the cores (at most ``MAX_AUTO_JOBS``). On CPU each job runs with the thread count set by ``--threads`` or
    ``$GRACE_BENCH_THREADS``, else with 1 thread, set here in the calling process (the workers copy it), so the
    numbers never depend on ``jobs`` or on the machine's core count.

    One small run per core beats one run over all cores on CPU: micro-CLIP's operations are too small to spread
    over threads, and idle OpenMP threads spin. The count does not change any number (``--threads`` is per run).
    """
    import os

    from grace_bench.runtime import read_launch, resolve_device
    from grace_bench.utils.runtime_info import apply_threads, resolve_threads

    if jobs is not None:
        check_jobs(jobs)
    if read_launch().distributed or resolve_device(device).type != "cpu":
        return jobs or 1  # the stages run one job at a time there
    per_run = resolve_threads(threads)
    if per_run is None:
        per_run = apply_threads(1) or 1
    if jobs is not None:
        return jobs
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_JOBS, cores // per_run))
