"""Safe output paths: slugs for untrusted names, containment inside an output root, writable folders.

Every value that comes from a file or the command line and becomes part of an output path goes
through :func:`slug`, and every output path is built with :func:`path_inside`, so no crafted input
can write outside the folder the user named.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from grace_bench.errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def slug(value: object, *, max_len: int = 80, fallback: str = "unnamed") -> str:
    """A file-name-safe form of ``value``: letters, digits, ``. _ + -`` only; never ``.``/``..`` or empty.

    Path separators, NUL bytes and every other character become ``-``; leading dots are dropped so
    the result can never name a parent folder or a hidden file.
    """
    text = _UNSAFE.sub("-", str(value)).strip("-")
    text = text.lstrip(".")
    text = text[:max_len].rstrip("-.")
    return text or fallback


def path_inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root / parts...``, refused (``UserError``) unless it resolves inside ``root``.

    Parts should already be slugs; this is the second line of defence against ``..``, absolute
    parts, NUL bytes and symlinks that lead out of ``root``.
    """
    root_path = Path(root)
    for part in parts:
        if "\x00" in str(part):
            raise UserError(f"refusing an output name with a NUL byte under {root_path}; rename the input")
    candidate = root_path.joinpath(*parts)
    resolved_root = root_path.resolve()
    resolved = candidate.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise UserError(f"output path {candidate} would leave {root_path}; the name comes from an input "
                        "file or flag, fix that value")
    return candidate


def ensure_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create ``path`` if needed and check that files can be written in it, before any work starts.

    Raises a one-line ``UserError`` naming ``what`` when the path is a file, cannot be created, or
    is read-only.
    """
    path = check_writable_dir(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} folder {path} ({exc.strerror}); choose a writable location") from None
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Check, without creating anything, that ``path`` is (or could be created as) a writable folder.

    Raises the same one-line ``UserError`` as :func:`ensure_writable_dir`; use it before reading the inputs
    so a bad output folder fails first and a failed run leaves no new folder behind.
    """
    path = Path(path)
    if "\x00" in str(path):
        raise UserError(f"{what} contains a NUL byte; give a plain folder path")
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a folder; give a folder path")
        probe_at = path
    else:
        probe_at = path.parent
        while not probe_at.exists() and probe_at != probe_at.parent:
            probe_at = probe_at.parent
        if not probe_at.is_dir():
            raise UserError(f"cannot create {what} folder {path}: {probe_at} is a file; choose another location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=probe_at)
    except OSError as exc:
        raise UserError(f"{what} folder {path} is not writable ({probe_at}: {exc.strerror}); fix its permissions or "
                        "choose another folder") from None
    os.close(fd)
    os.unlink(probe)
    return path
