"""Help texts state what a flag does, not how it changed (no "default 32; was 64")."""

from __future__ import annotations

import argparse
import re

from grace_bench.cli import build_parser

HISTORY = re.compile(r"\bwas \d|\b(previously|formerly|no longer|used to be|until now|is now|are now|changed from)\b",
                     re.IGNORECASE)


def _all_help(parser: argparse.ArgumentParser, path: str = "grace-bench"):
    yield path, parser.description or ""
    for action in parser._actions:
        yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help or ""
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_help(sub, f"{path} {name}")


def test_help_texts_carry_no_change_history():
    texts = list(_all_help(build_parser()))
    assert any(where.endswith("--slq-iter") for where, _ in texts)  # the walk reaches nested subcommands
    offending = [f"{where}: {text}" for where, text in texts if HISTORY.search(text)]
    assert not offending, "\n".join(offending)
