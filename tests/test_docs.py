"""The docs resolve: every relative link points at a file (and heading), every quoted command exists, and the
generated tables are current.

Commands are checked against the real parser (``grace_bench.cli.build_parser``) without running them: for each
``grace-bench ...`` invocation in a code span or block, the subcommand (and sub-subcommand) must exist, a choice
of a positional (``plot KIND``) must be one of its choices, and every ``--flag`` must be an option of that
subcommand. ``python analysis/X.py`` / ``python benchmarks/X.py`` must exist and ``python -m grace_bench.X`` import.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from grace_bench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INVOCATION = re.compile(r"(?:(?<![\w/.-])grace-bench|-m grace_bench)(?=\s|$)([^\n]*)")
SCRIPT = re.compile(r"python3?\s+((?:analysis|benchmarks)/[\w./|-]+)")
MODULE = re.compile(r"python3?\s+-m\s+(grace_bench[\w.]*)")
WORD = re.compile(r"^[a-z][a-z0-9-]*$")
STOP = ("#", "&&", "||", ";", "|", ">", "2>")


def code_chunks(text: str) -> list[str]:
    """The text of every fenced block and inline code span (``\\|`` in tables unescaped)."""
    chunks = [m.group(1) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    chunks += [m.group(2) for m in SPAN.finditer(prose)]
    return [c.replace("\\|", "|") for c in chunks]


def link_targets(text: str) -> list[str]:
    """Targets of Markdown links and images outside code."""
    prose = SPAN.sub("", FENCE.sub("", text))
    return [m.group(1) for m in LINK.finditer(prose)]


def anchors(text: str) -> set[str]:
    """GitHub's anchors of the headings of a page (lower case, punctuation dropped, spaces to hyphens)."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", FENCE.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "").lower()).replace(" ", "-") for h in headings}


def _prepared(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    if hasattr(parser, "_run_deferred"):
        parser._run_deferred()  # arguments a GraceArgumentParser adds only before parsing
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return None


def _choices_positional(parser: argparse.ArgumentParser) -> argparse.Action | None:
    plain = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    return plain[0] if plain and plain[0].choices else None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def check_invocation(args: str, parser: argparse.ArgumentParser) -> list[str]:
    """Problems of one ``grace-bench`` invocation (``args``: what follows the program name)."""
    tokens = []
    for raw in args.split():
        if raw in STOP or raw.startswith("#"):
            break
        tokens.append(raw.strip("[](),`"))
    parsers, path, problems = [_prepared(parser)], ["grace-bench"], []
    positional_done = False
    skip_value = False
    for token in tokens:
        if skip_value:
            skip_value = False
            continue
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            for p in parsers:
                action = _options(p).get(flag)
                if action is None:
                    problems.append(f"`{' '.join(path)}` has no option {flag}")
                elif action.nargs != 0 and "=" not in token:
                    skip_value = True
            continue
        if not token or token.startswith("-") or token == "...":
            continue
        subs = _subcommands(parsers[0])
        alternatives = token.split("|")
        if subs is not None:
            if not all(WORD.match(a) for a in alternatives):
                return problems  # a placeholder such as KIND: nothing further can be checked
            missing = [a for a in alternatives if a not in subs]
            if missing:
                problems.append(f"`{' '.join(path)}` has no subcommand {', '.join(missing)}")
                return problems
            parsers = [_prepared(subs[a]) for a in alternatives]
            path.append(token)
            continue
        positional = _choices_positional(parsers[0])
        if positional is not None and not positional_done:
            positional_done = True
            if all(WORD.match(a) for a in alternatives):
                missing = [a for a in alternatives if a not in positional.choices]
                if missing:
                    problems.append(f"`{' '.join(path)}` {positional.dest} has no choice {', '.join(missing)}")
    return problems


def check_page(text: str, base: Path, parser: argparse.ArgumentParser) -> list[str]:
    """Every problem of one Markdown page: broken relative links, unknown commands, flags, scripts, modules."""
    problems = []
    for target in link_targets(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path, _, anchor = target.partition("#")
        if not (base / path).exists():
            problems.append(f"link to {target} does not resolve")
        elif anchor and path.endswith(".md") and anchor not in anchors((base / path).read_text(encoding="utf-8")):
            problems.append(f"link to {target}: no heading #{anchor} there")
    for chunk in code_chunks(text):
        for m in INVOCATION.finditer(chunk):
            problems += check_invocation(m.group(1), parser)
        for m in SCRIPT.finditer(chunk):
            first, *rest = m.group(1).split("|")
            folder = first.rsplit("/", 1)[0]
            for script in [first, *(r if "/" in r else f"{folder}/{r}" for r in rest)]:
                if not (ROOT / script).is_file():
                    problems.append(f"script {script} does not exist")
        for m in MODULE.finditer(chunk):
            if importlib.util.find_spec(m.group(1)) is None:
                problems.append(f"module {m.group(1)} does not exist")
    return problems


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_and_command_in_the_docs_resolves(page, parser):
    assert check_page(page.read_text(encoding="utf-8"), page.parent, parser) == []


def test_the_checker_finds_broken_links_commands_flags_and_scripts(parser, tmp_path):
    """A deliberately broken page: each mistake must be reported (the checker can fail)."""
    (tmp_path / "there.md").write_text("# A `b`\n")
    broken = "\n".join([
        "[ok](there.md#a-b) [gone](missing.md#part) [web](https://example.org) [anchor](#top) [bad](there.md#nope)",
        "`grace-bench evaluate micro`",
        "`grace-bench eval micro --no-such-flag 3 --attack none`",
        "```bash",
        "grace-bench geometry curvature micro",
        "grace-bench --threads 2 geometry hessian micro --top-k 3 --bogus   # a comment --ignored",
        "grace-bench plot tradeof results/",
        "python analysis/no_table.py results/",
        "python -m grace_bench.no_such_module",
        "```",
    ])
    problems = check_page(broken, tmp_path, parser)
    assert problems == [
        "link to missing.md#part does not resolve",
        "link to there.md#nope: no heading #nope there",
        "`grace-bench geometry` has no subcommand curvature",
        "`grace-bench geometry hessian` has no option --bogus",
        "`grace-bench plot` kind has no choice tradeof",
        "script analysis/no_table.py does not exist",
        "module grace_bench.no_such_module does not exist",
        "`grace-bench` has no subcommand evaluate",
        "`grace-bench eval` has no option --no-such-flag",
    ]


def test_alternatives_and_placeholders_are_checked_or_skipped(parser):
    assert check_invocation("geometry hessian|sharpness CKPT --ref CKPT --n 8", parser) == []
    assert check_invocation("eval [CKPT] [--suite micro|imagenet] [--n-adv N]", parser) == []
    assert check_invocation("KIND --whatever", parser) == []
    assert check_invocation("geometry weights|sharpness micro --rho 0.1", parser) == [
        "`grace-bench geometry weights|sharpness` has no option --rho"]


def test_generated_tables_equal_the_code():
    """docs/methods.md holds defaults_markdown() and suite_defaults_markdown() verbatim
    (regenerate with ``python -m grace_bench.docs``)."""
    from grace_bench.docs import stale

    assert stale(ROOT) == []


def test_regenerate_replaces_only_the_marked_block():
    from grace_bench.docs import committed_table, regenerate

    text = "before\n<!-- BEGIN t -->\nold\n<!-- END t -->\nafter\n"
    new = regenerate(text, "t", "| a |\n")
    assert new == "before\n<!-- BEGIN t -->\n| a |\n<!-- END t -->\nafter\n"
    assert committed_table(new, "t") == "| a |\n"
    with pytest.raises(ValueError, match="add the markers"):
        committed_table("no markers", "t")


def test_the_docs_script_finds_and_rewrites_a_stale_table(tmp_path, capsys):
    from grace_bench.docs import main

    page = tmp_path / "docs" / "methods.md"
    page.parent.mkdir()
    page.write_text("# m\n\n<!-- BEGIN defaults_markdown -->\n| old |\n<!-- END defaults_markdown -->\n\n"
                    "<!-- BEGIN suite_defaults_markdown -->\n<!-- END suite_defaults_markdown -->\n")
    protocols = "<!-- BEGIN protocols_markdown -->\n<!-- END protocols_markdown -->\n"
    (tmp_path / "docs" / "protocols.md").write_text(protocols)
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "out of date: defaults_markdown" in capsys.readouterr().err
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    assert "| grace | lambda_gv |" in page.read_text() and "| old |" not in page.read_text()
