"""The package's import graph is acyclic: every ``grace_bench`` import counts, also those inside functions.

Edges: ``import grace_bench.x`` / ``from grace_bench.x import y`` (to ``grace_bench.x.y`` when that is a module),
relative imports, and the package ``__init__`` of every imported module (importing ``a.b.c`` runs ``a/__init__``
and ``a/b/__init__``), also under ``if TYPE_CHECKING:`` (a type-only cycle is still two modules that need each
other: move the shared type down). Left out: a registry's lazy ``"module:attribute"`` built-ins
(``grace_bench.registry``), which load on first ``get``, after every import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grace_bench

PACKAGE = Path(grace_bench.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _nearest(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(tree: ast.AST, package: str) -> set[str]:
    """Dotted names this module imports, at any depth (functions, classes, ``if TYPE_CHECKING:``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over the whole package."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for imported in _imported(ast.parse(path.read_text(encoding="utf-8")), package):
            if not imported.startswith("grace_bench"):
                continue
            target = _nearest(imported, modules)
            while target:  # the module and every package __init__ above it
                if target != name and not name.startswith(target + "."):  # own parents are already running
                    deps.add(target)
                target = target.rpartition(".")[0]
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def test_cycle_finder_sees_imports_inside_functions():
    code = ("def f():\n    from grace_bench.b import x\n"
            "class C:\n    def g(self):\n        from . import c\n"
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import grace_bench.d\n")
    names = _imported(ast.parse(code), "grace_bench")
    assert {"grace_bench.b", "grace_bench.b.x", "grace_bench.c", "grace_bench.d"} <= names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_package_has_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)
