"""Start-up of the `grace-bench` command: help without torch, and `--threads` on every command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from grace_bench.cli import _all_parsers, build_parser, main

# Subcommands whose --help needs torch: finetune lists every method's settings, read from the method classes.
HELP_NEEDS_TORCH = {"finetune"}


def _torch_imported_after(code: str) -> bool:
    """Run ``code`` in a fresh interpreter (stdout discarded); True if it imported torch."""
    probe = f"import sys, contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n{code}\n" \
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stderr.strip().splitlines()[-1] == "TORCH"


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command line prefix naming a (sub)command, e.g. ('geometry', 'hessian')."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append((*prefix, name))
                out += _commands(child, (*prefix, name))
    return out


def test_building_the_parser_and_top_level_help_do_not_import_torch():
    assert not _torch_imported_after("    from grace_bench.cli import build_parser\n    build_parser()")
    code = ("    from grace_bench.cli import main\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert not _torch_imported_after(code)


def test_subcommand_help_does_not_import_torch():
    commands = [c for c in _commands(build_parser()) if c[0] not in HELP_NEEDS_TORCH]
    assert ("geometry", "hessian") in commands and ("micro", "info") in commands
    lines = ["    from grace_bench.cli import main"]
    for cmd in commands:
        lines.append(f"    try:\n        main({[*cmd, '--help']!r})\n    except SystemExit:\n        pass")
    assert not _torch_imported_after("\n".join(lines))


def test_every_command_accepts_threads():
    parser = build_parser()
    leaves = [p for p in _all_parsers(parser) if p._subparsers is None]
    assert len(leaves) >= 12
    for p in leaves:
        assert "--threads" in p.format_help(), p.prog
    args = parser.parse_args(["geometry", "hessian", "micro", "--threads", "3"])
    assert args.threads == 3
    assert parser.parse_args(["--threads", "2", "micro", "info"]).threads == 2


def test_bad_thread_count_is_a_user_error(capsys, monkeypatch):
    assert main(["micro", "info", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    monkeypatch.setenv("GRACE_BENCH_THREADS", "many")
    assert main(["micro", "info"]) == 2
    assert "GRACE_BENCH_THREADS" in capsys.readouterr().err


def test_result_file_records_the_thread_count(tmp_path, monkeypatch):
    monkeypatch.setenv("GRACE_BENCH_CACHE", str(tmp_path / "cache"))
    previous = torch.get_num_threads()
    wanted = 2 if previous == 1 else 1
    try:
        code = main(["eval", "micro", "--datasets", "micro", "--attack", "none", "--limit", "16", "--workers", "0",
                     "--no-progress", "--out", str(tmp_path / "out"), "--threads", str(wanted)])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    (result,) = (tmp_path / "out" / "results").rglob("micro-clean-*.json")
    runtime = json.loads(result.read_text())["versions"]["runtime"]
    assert runtime["threads"] == wanted
    assert runtime["cpu"] and runtime["torch"] == torch.__version__


@pytest.mark.parametrize("value", ["1", "2"])
def test_threads_env_is_the_default(monkeypatch, value):
    from grace_bench.utils.runtime_info import resolve_threads

    monkeypatch.setenv("GRACE_BENCH_THREADS", value)
    assert resolve_threads(None) == int(value)
    assert resolve_threads(4) == 4  # the flag wins
    monkeypatch.delenv("GRACE_BENCH_THREADS")
    assert resolve_threads(None) is None  # leave torch's default


def test_finetune_method_flags_are_added_when_finetune_is_parsed():
    args = build_parser().parse_args(["finetune", "--method", "tecoa", "--eps", "2/255", "--threads", "1"])
    assert args.m__eps == "2/255" and args.threads == 1
