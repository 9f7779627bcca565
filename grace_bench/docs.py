"""Regenerate the tables in ``docs/`` that come from code: ``python -m grace_bench.docs [--check]``.

Each generated table sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in a docs page; the text
between the markers is replaced by ``GENERATED[name]()``. ``--check`` writes nothing and exits 1 when a committed
table differs from the generated one (``tests/test_docs.py`` asserts the same).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from grace_bench.utils.atomic import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def _method_defaults() -> str:
    from grace_bench.finetune.methods import defaults_markdown

    return defaults_markdown()


def _suite_defaults() -> str:
    from grace_bench.data.suites import suite_defaults_markdown

    return suite_defaults_markdown()


def _protocols() -> str:
    from grace_bench.eval.protocols import protocols_markdown

    return protocols_markdown()


# marker name -> (docs page relative to the repository root, generator)
GENERATED: dict[str, tuple[str, Callable[[], str]]] = {
    "defaults_markdown": ("docs/methods.md", _method_defaults),
    "suite_defaults_markdown": ("docs/methods.md", _suite_defaults),
    "protocols_markdown": ("docs/protocols.md", _protocols),
}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n)(.*?)(<!-- END {re.escape(name)} -->)", re.S)


def committed_table(text: str, name: str) -> str:
    """The text between the markers of ``name`` in ``text`` (ValueError when the markers are missing)."""
    match = _block(name).search(text)
    if match is None:
        raise ValueError(f"no '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' block; add the markers")
    return match.group(2)


def regenerate(text: str, name: str, table: str) -> str:
    """``text`` with the block of ``name`` replaced by ``table``."""
    committed_table(text, name)
    return _block(name).sub(lambda m: m.group(1) + table.rstrip("\n") + "\n" + m.group(3), text, count=1)


def stale(root: Path = REPO_ROOT) -> list[str]:
    """Names of the generated tables whose committed text differs from the generated one."""
    found = []
    for name, (page, make) in GENERATED.items():
        text = (root / page).read_text(encoding="utf-8")
        if committed_table(text, name) != make().rstrip("\n") + "\n":
            found.append(f"{name} ({page})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grace_bench.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table is out of date")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if args.check:
        old = stale(args.root)
        for name in old:
            print(f"out of date: {name}; run `python -m grace_bench.docs`", file=sys.stderr)
        return 1 if old else 0
    for name, (page, make) in GENERATED.items():
        path = args.root / page
        text = path.read_text(encoding="utf-8")
        new = regenerate(text, name, make())
        if new != text:
            atomic_write_text(path, new)
            print(f"updated {name} in {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
