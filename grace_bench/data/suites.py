"""The registry of evaluation suites by name (a new suite is one line in ``SUITES``).

Suite definitions live in their own modules (``micro``, ``imagenet``, ``zero_shot``) and never import this one; the
types are in ``grace_bench.data.suite_spec`` and re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

from grace_bench.data.suite_spec import DataContext, DatasetSpec, Role, Suite
from grace_bench.errors import UserError
from grace_bench.registry import Registry

__all__ = ["DEFAULT_SUITE", "SUITES", "DataContext", "DatasetSpec", "Role", "Suite", "default_checkpoint_for",
           "get_suite", "list_suites", "register_suite", "suite_defaults_markdown", "suite_for_arch"]

DEFAULT_SUITE = "micro"  # what runs when neither a suite nor a checkpoint is named

# name -> a factory returning the Suite (called on every get: a suite may read the environment).
BUILTIN_SUITES = {
    "micro": "grace_bench.data.micro:micro_suite",
    "imagenet": "grace_bench.data.imagenet:build_imagenet_suite",
    "zeroshot": "grace_bench.data.zero_shot.suite:build_zero_shot_suite",
}
SUITES: Registry[Callable[[], Suite]] = Registry("suite", BUILTIN_SUITES)


def register_suite(name: str, factory: Callable[[], Suite]) -> None:
    """Declare a suite lazily: ``factory`` runs on every ``get_suite(name)``."""
    SUITES.register(name, factory)


def get_suite(name: str) -> Suite:
    """The suite called ``name``, or a one-line error listing the known suites."""
    return SUITES.get(name)()


def list_suites() -> list[str]:
    return SUITES.names()


def suite_for_arch(arch: str) -> str:
    """The suite a model of architecture ``arch`` is evaluated on by default (the suites' ``model_archs``).

    Suites are built one at a time, ``DEFAULT_SUITE`` first, until one names ``arch``; a suite claiming ``"*"``
    (any other architecture) is the fallback.
    """
    fallback = None
    for name in [DEFAULT_SUITE] + [n for n in list_suites() if n != DEFAULT_SUITE and not n.startswith("_")]:
        suite = get_suite(name)
        if arch in suite.model_archs:
            return suite.name
        if fallback is None and "*" in suite.model_archs:
            fallback = suite.name
    if fallback is None:
        raise UserError(f"no suite evaluates architecture '{arch}' by default; name one with suite=... (--suite)")
    return fallback


def default_checkpoint_for(suite_name: str | None) -> str:
    """The checkpoint a suite evaluates when none is named (``DEFAULT_SUITE`` when no suite is named either)."""
    suite = get_suite(suite_name or DEFAULT_SUITE)
    if not suite.default_checkpoint:
        raise UserError(f"suite '{suite.name}' has no default model; name the checkpoint to evaluate")
    return suite.default_checkpoint


def suite_defaults_markdown(names: list[str] | None = None) -> str:
    """A Markdown table of the suites' fine-tuning defaults and their sources (default: the built-in suites,
    as documented in docs/methods.md; suites registered at run time are not part of the docs)."""
    rows = ["| suite | setting | default | source |", "|---|---|---|---|"]
    for name in names if names is not None else sorted(BUILTIN_SUITES):
        defaults = get_suite(name).training_defaults()
        if defaults is None:
            rows.append(f"| {name} | (all) | method paper defaults | the method table |")
            continue
        for key, value in {**defaults.trainer, **defaults.method_args}.items():
            rows.append(f"| {name} | {key} | {value!r} | {defaults.source} |")
        for method, value in sorted(defaults.lr.items()):
            rows.append(f"| {name} | lr ({method}) | {value!r} | {defaults.lr_source} |")
    return "\n".join(rows)
