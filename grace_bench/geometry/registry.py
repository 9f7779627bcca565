"""The geometry kinds (a ``grace_bench.registry.Registry``): name -> config class and run function.

Each module in ``geometry.diagnostics`` registers one; they are found by scanning that package.

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

from grace_bench.geometry.config import GeometryConfig
from grace_bench.registry import Registry

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


_KINDS: Registry[GeometryKind] = Registry("geometry kind")
_loaded = False


def register(name: str, config: type[GeometryConfig], run: RunFn, *, help: str,
             headline: Callable[[dict], str] | None = None, order: int = 100,
             study: dict[str, dict[str, Any]] | None = None) -> GeometryKind:
    """Add a geometry kind (called at import by each module of ``geometry.diagnostics``)."""
    if name in _KINDS and _KINDS.get(name).run is not run:
        raise ValueError(f"geometry kind '{name}' is registered twice")
    return _KINDS.register(name, GeometryKind(name, config, run, help, headline, order, study))


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
    found = [_KINDS.get(name) for name in _KINDS.names()]
    return {kind.name: kind for kind in sorted(found, key=lambda k: (k.order, k.name))}


def study_geometry(profile: str) -> dict[str, dict[str, Any]]:
    """Kind -> settings of every kind that takes part in a study of ``profile`` (micro, quick or paper)."""
    return {name: dict(kind.study[profile]) for name, kind in kinds().items()
            if kind.study and profile in kind.study}


def get_kind(name: str) -> GeometryKind:
    """The kind called ``name``; a one-line ``UserError`` naming the nearest kind otherwise."""
    _load()
    return _KINDS.get(name)
