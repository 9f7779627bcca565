"""Registry of fine-tuning methods by name (``ft``, ``flyp``, ``tecoa``, ``fare``, ``pmg-aft``, ``grace``)."""

from __future__ import annotations

import importlib

from grace_bench.errors import UserError
from grace_bench.finetune.methods.base import Hyper, Method, TrainContext

__all__ = ["Hyper", "Method", "TrainContext", "register_method", "get_method", "list_methods"]

_METHODS: dict[str, type[Method]] = {}
_BUILTIN_MODULES = (
    "grace_bench.finetune.methods.ft",
    "grace_bench.finetune.methods.flyp",
    "grace_bench.finetune.methods.tecoa",
    "grace_bench.finetune.methods.fare",
    "grace_bench.finetune.methods.pmg_aft",
)
# Modules owned by other components that register methods when importable.
_OPTIONAL_MODULES = ("grace_bench.finetune.grace",)
_IMPORTED = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _METHODS[cls.name] = cls
    return cls


def _import_builtin_methods() -> None:
    global _IMPORTED
    if _IMPORTED:
        return
    _IMPORTED = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    for mod in _OPTIONAL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # the component may not exist yet
            if exc.name is None or not mod.startswith(exc.name):
                raise


def get_method(name: str) -> type[Method]:
    """The method class called ``name``, or a one-line UserError listing the known ones."""
    _import_builtin_methods()
    if name == "wise-ft":
        raise UserError("wise-ft is post-hoc: train with --method ft, then run `grace-bench wise ZS_SPEC runs/FT`")
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Names of all registered methods."""
    _import_builtin_methods()
    return sorted(_METHODS)


def defaults_markdown() -> str:
    """A Markdown table of every method's defaults and the paper each comes from (for the README)."""
    rows = ["| method | setting | default | source |", "|---|---|---|---|"]
    for name in list_methods():
        if name.startswith("_"):
            continue
        cls = _METHODS[name]
        for key, hyper in {**cls.trainer_defaults, **cls.defaults}.items():
            rows.append(f"| {name} | {key} | {_show(hyper.value)} | {hyper.source} |")
    return "\n".join(rows)


def _show(value: object) -> str:
    from grace_bench.attacks.threat import format_eps

    if isinstance(value, float) and 0 < value < 1:
        return format_eps(value)  # 4/255 for a multiple of 1/255, else repr
    return repr(value)
