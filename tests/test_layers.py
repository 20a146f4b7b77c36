"""The package's floors: no module imports a floor above its own, slides never reach training code,
and no two modules import each other (directly or round a circle). Imports inside functions and
under ``TYPE_CHECKING`` count as well: a lazy import is still a dependency.

Floors, bottom to top (see the README's Development section):

0. ``config``, ``data``, ``metrics``, ``models``, ``viz`` — the deployable model and plain functions
1. ``engine`` — the one training loop, evaluation, run context
2. ``methods`` — one file per published method, and their registry
3. ``slides``, ``cli`` — slide inference (which may use floor 0 only) and the command line
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "tissueseg"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

FLOORS = {"config": 0, "data": 0, "metrics": 0, "models": 0, "viz": 0, "engine": 1, "methods": 2,
          "slides": 3, "cli": 3}
# rooms that may use less than their floor allows: the slide pipeline runs a saved model, not training code
MAY_USE = {"slides": {"config", "data", "metrics", "models", "viz", "slides"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def room(module: str) -> str | None:
    """The top-level room (``data``, ``engine``, …) of a module; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def floor(module: str) -> int:
    r = room(module)
    return -1 if r is None else FLOORS[r]


def resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not MODULES[importer].name == "__init__.py":
        base = base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Every package module that ``module`` imports anywhere in its body (the most specific one named)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # `from pkg import submodule` names the submodule
                full = f"{target}.{alias.name}"
                add(full if full in MODULES else target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_room_has_a_floor():
    unknown = sorted({room(m) for m in MODULES} - set(FLOORS) - {None})
    assert not unknown, f"modules outside the known rooms: {unknown} (add them to FLOORS and the README)"


def test_no_module_imports_a_floor_above_it():
    bad = []
    for module, targets in GRAPH.items():
        for target in sorted(targets):
            if floor(target) > floor(module):
                bad.append(f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})")
            allowed = MAY_USE.get(room(module))
            if allowed is not None and room(target) is not None and room(target) not in allowed:
                bad.append(f"{module} imports {target}: {room(module)}/ may use only {sorted(allowed)}")
    assert not bad, "imports against the floors:\n" + "\n".join(bad)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
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

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    cycles = _cycles()
    assert not cycles, "modules that import each other: " + "; ".join(" ↔ ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from tissueseg.engine import trainer", {"tissueseg.engine.trainer"}),
    ("def f():\n    from tissueseg.engine.trainer import Trainer", {"tissueseg.engine.trainer"}),
    ("import tissueseg.engine.trainer as t", {"tissueseg.engine.trainer"}),
    ("from tissueseg.methods import mlps", {"tissueseg.methods.mlps"}),
])
def test_the_check_sees_lazy_and_aliased_imports(source, expected, tmp_path, monkeypatch):
    monkeypatch.setitem(MODULES, "tissueseg.data._probe", tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source)
    assert imports_of("tissueseg.data._probe") == expected
