"""The geometry kinds: name -> (config class, run function). Each module in ``geometry.diagnostics`` registers one.

Adding a diagnostic is one new module there that defines its config (``config.GeometryConfig``
subclass), a run function ``(GeometryInputs) -> (payload, arrays)`` and calls ``register``; the CLI
subcommand, the library entry point (``geometry.run``) and ``compare`` pick it up. No torch at import.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grace_bench.errors import UserError
from grace_bench.geometry.config import GeometryConfig

RunFn = Callable[[Any], tuple[dict, dict]]


@dataclass(frozen=True)
class GeometryKind:
    """One diagnostic: its config class, its run function, a one-line help, a console headline and the settings
    ``compare`` runs it with per study profile (``micro``, ``quick``, ``paper``; absent: not in that study)."""

    name: str
    config: type[GeometryConfig]
    run: RunFn
    help: str
    headline: Callable[[dict], str] | None = None
    order: int = 100
    study: dict[str, dict[str, Any]] | None = None


_KINDS: dict[str, GeometryKind] = {}
_loaded = False


def register(name: str, config: type[GeometryConfig], run: RunFn, *, help: str,
             headline: Callable[[dict], str] | None = None, order: int = 100,
             study: dict[str, dict[str, Any]] | None = None) -> GeometryKind:
    """Add a geometry kind (called at import by each module of ``geometry.diagnostics``)."""
    if name in _KINDS and _KINDS[name].run is not run:
        raise ValueError(f"geometry kind '{name}' is registered twice")
    kind = GeometryKind(name, config, run, help, headline, order, study)
    _KINDS[name] = kind
    return kind


def _load() -> None:
    global _loaded
    if _loaded:
        return
    from grace_bench.geometry import diagnostics

    for info in pkgutil.iter_modules(diagnostics.__path__):
        importlib.import_module(f"{diagnostics.__name__}.{info.name}")
    _loaded = True


def kinds() -> dict[str, GeometryKind]:
    """Every registered kind, in help order."""
    _load()
    return dict(sorted(_KINDS.items(), key=lambda kv: (kv[1].order, kv[0])))


def study_geometry(profile: str) -> dict[str, dict[str, Any]]:
    """Kind -> settings of every kind that takes part in a study of ``profile`` (micro, quick or paper)."""
    return {name: dict(kind.study[profile]) for name, kind in kinds().items()
            if kind.study and profile in kind.study}


def get_kind(name: str) -> GeometryKind:
    """The kind called ``name``; ``UserError`` listing the kinds otherwise."""
    found = kinds().get(name)
    if found is None:
        raise UserError(f"unknown geometry kind '{name}'; choose one of: {', '.join(kinds())}")
    return found
