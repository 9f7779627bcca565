"""Per-result file locks, so two evaluations writing into one folder compute each result once.

``ResultLock(path)`` locks ``.<name>.lock`` beside ``path`` with ``fcntl.flock``: the kernel drops the lock
when its holder dies (even by SIGKILL), so a killed run never blocks a later one. The lock file records the
holder's pid and host for the "waiting for ..." message and is removed on release; an acquirer that finds
its file was removed meanwhile retries on the new one. Without ``fcntl`` (Windows) the lock is a no-op.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path_for(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: hidden, in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _default_on_wait(lock_file: Path, holder: str) -> None:
    print(f"waiting for {holder} which is computing {lock_file.name[1:-5]} (lock {lock_file})", file=sys.stderr,
          flush=True)


class ResultLock:
    """An exclusive inter-process lock on one result path; use as ``with ResultLock(path): ...``."""

    def __init__(self, path: str | os.PathLike, on_wait: Callable[[Path, str], None] | None = _default_on_wait):
        self.lock_file = lock_path_for(path)
        self.on_wait = on_wait
        self._fd: int | None = None

    def holder(self) -> str:
        """``pid N on HOST`` as written by the current holder, or ``another process``."""
        try:
            text = self.lock_file.read_text().split()
        except OSError:
            text = []
        return f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "another process"

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for a live holder when ``blocking``); False only when not blocking and busy."""
        if fcntl is None:
            return True
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        told = False
        while True:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not blocking:
                    os.close(fd)
                    return False
                if self.on_wait is not None and not told:
                    self.on_wait(self.lock_file, self.holder())
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if self._is_current(fd):
                break
            os.close(fd)  # the holder removed the file while we waited: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.lock_file.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.lock_file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __enter__(self) -> ResultLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
