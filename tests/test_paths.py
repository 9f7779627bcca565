"""Output-path safety: slugs, containment inside the output root, writable folders."""

from __future__ import annotations

import pytest

from grace_bench.errors import UserError
from grace_bench.utils.paths import ensure_writable_dir, path_inside, slug


@pytest.mark.parametrize("raw", ["../../etc/passwd", "/abs/path", "a\x00b", "..", ".", "", "x/../../y", "Linf/../.."])
def test_slug_never_names_a_parent_or_absolute_path(raw, tmp_path):
    s = slug(raw)
    assert s and "/" not in s and "\x00" not in s and not s.startswith(".")
    assert path_inside(tmp_path, s).resolve().parent == tmp_path.resolve()


def test_slug_keeps_ordinary_names():
    assert slug("ViT-B-32_openai+lora.v1") == "ViT-B-32_openai+lora.v1"
    assert slug("wise-ft alpha=0.5") == "wise-ft-alpha-0.5"


@pytest.mark.parametrize("parts", [("..", "x"), ("/etc",), ("a", "..", "..", "b"), ("a\x00",)])
def test_path_inside_refuses_escapes(parts, tmp_path):
    with pytest.raises(UserError):
        path_inside(tmp_path / "root", *parts)


def test_path_inside_refuses_symlink_out(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UserError):
        path_inside(root, "link", "x.json")


def test_ensure_writable_dir(tmp_path):
    assert ensure_writable_dir(tmp_path / "new" / "dir").is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ensure_writable_dir(f)


def test_ensure_writable_dir_read_only(tmp_path, monkeypatch):
    """A folder the process cannot write to (simulated: CI runs as root, which writes anywhere)."""
    import tempfile

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match="not writable"):
        ensure_writable_dir(tmp_path)
