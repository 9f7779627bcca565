"""One small registry pattern for everything chosen by name: methods, suites, attacks, geometry kinds.

A ``Registry`` maps names to objects. Built-in entries are declared as ``"module:attribute"`` strings and
imported on first ``get`` (so listing names costs nothing and a built-in module never needs to import its
registry: no import cycles). Anything else registers with ``register(name, obj)`` or as a decorator
(``@REG.register("name")``). A missing built-in module is an error like any other import error: nothing is
skipped silently. An unknown name raises a one-line ``UserError`` listing the known names, with the nearest
name suggested.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, overload

from grace_bench.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind (``what`` names the kind in errors, e.g. ``"method"``)."""

    def __init__(self, what: str, builtins: Mapping[str, str] | None = None) -> None:
        self.what = what
        self._lazy: dict[str, str] = {}
        self._items: dict[str, T] = {}
        for name, target in (builtins or {}).items():
            self.register_lazy(name, target)

    def register_lazy(self, name: str, target: str) -> None:
        """Declare ``name`` as ``"package.module:attribute"``, imported on first ``get(name)``."""
        module, sep, attribute = target.partition(":")
        if not (name and module and sep and attribute):
            raise ValueError(f"lazy {self.what} entry {name!r} needs a 'module:attribute' target, got {target!r}")
        self._items.pop(name, None)
        self._lazy[name] = target

    @overload
    def register(self, name: str, obj: T) -> T: ...

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    def register(self, name: str, obj: T | None = None):
        """``register(name, obj)`` returns ``obj``; ``register(name)`` is a decorator doing the same."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty string name, got {name!r}")

        def add(value: T) -> T:
            self._lazy.pop(name, None)
            self._items[name] = value
            return value

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Forget ``name`` (tests; a missing name is no error)."""
        self._items.pop(name, None)
        self._lazy.pop(name, None)

    def get(self, name: str) -> T:
        """The object called ``name``; a one-line UserError naming the known ones when there is none."""
        if name in self._items:
            return self._items[name]
        if name in self._lazy:
            module, _, attribute = self._lazy[name].partition(":")
            value = getattr(importlib.import_module(module), attribute)
            del self._lazy[name]
            self._items[name] = value
            return value
        raise UserError(self.unknown_message(name))

    def unknown_message(self, name: object) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown {self.what} '{name}'; {hint}choose one of: {', '.join(known)}"

    def names(self) -> list[str]:
        """Every registered name, sorted (nothing is imported)."""
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
