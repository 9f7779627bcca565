"""CLI behaviour on bad input: one line, non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str, cwd=None, cache=None) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", **({"GRACE_BENCH_CACHE": str(cache)} if cache else {})}
    return subprocess.run([sys.executable, "-m", "grace_bench", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_eval_missing_checkpoint_is_one_line(tmp_path):
    r = _run("eval", "/no/such/file", "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "/no/such/file" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_suite_and_bad_eps(tmp_path):
    r = _run("eval", "tiny-clip:/no/file.safetensors", "--suite", "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = _run("micro", "info", cache=tmp_path / "cache")
    assert r.returncode == 0 and "micro-a" in r.stdout


def test_help_lists_every_subcommand():
    r = _run("--help")
    for cmd in ("eval", "finetune", "wise", "geometry", "plot", "leaderboard", "convert", "micro"):
        assert cmd in r.stdout
