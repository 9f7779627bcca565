"""Run independent study jobs (fine-tuning runs, evaluations) in ``--jobs N`` worker processes.

Each worker is a fresh process with torch's intra-op threads set to the caller's count (``--threads`` is per
job, ``--jobs`` is how many run at once), so a job computes the same numbers whatever ``--jobs`` is. Results
come back in submission order; the first failure is raised after the running jobs finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _init_worker(threads: int) -> None:
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
    from concurrent.futures import ProcessPoolExecutor

    import torch

    ctx = multiprocessing.get_context("spawn")  # no forked torch state; same start on every platform
    with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=ctx, initializer=_init_worker,
                             initargs=(torch.get_num_threads(),)) as pool:
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
