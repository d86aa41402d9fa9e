"""The layout by layer holds: every import of ours points to a lower layer or within its own package,
and no module imports itself back through others (docs/architecture.md draws the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RANK = {"router": 0, "router.config": 1, "router.table": 2, "router.proxy": 3, "router.cert": 3, "router.listen": 4,
        "registry": 4, "ui": 5, "router.run": 6}


def _layer(module: str) -> str:
    if module == "router.__main__":  # `python -m router`: the command line, as router.run.cli
        return "router.run"
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no layer")


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("router", "registry", "ui"):
        for f in (ROOT / top).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`: annotations only, never run."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(path: Path, known: dict[str, Path], *, type_only: bool = True) -> set[str]:
    """Every module of ours this file imports, at any depth (function bodies too, and with `type_only` the
    imports under TYPE_CHECKING)."""
    found = set()
    tree = ast.parse(path.read_text())
    skip = set() if type_only else _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


MODULES = _modules()
GRAPH = {m: _imports(p, MODULES) - {m} for m, p in MODULES.items()}  # for the direction of imports
# what runs at import time: a type-only reference back (an annotation naming a caller) is no circle
RUNTIME = {m: _imports(p, MODULES, type_only=False) - {m} for m, p in MODULES.items()}


def test_the_layers_cover_every_module() -> None:
    assert {"router.table.routes", "router.proxy.handler", "router.run.cli", "registry.consul.watcher"} <= set(GRAPH)
    for m in GRAPH:
        _layer(m)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_downwards(module: str) -> None:
    mine = RANK[_layer(module)]
    upward = [dep for dep in GRAPH[module]
              if _layer(dep) != _layer(module) and RANK[_layer(dep)] >= mine and _layer(dep) != "router"]
    assert not upward, f"{module} imports a layer at or above its own: {upward}"


def test_no_import_circles() -> None:
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in RUNTIME[m]:
            if dep in ("router", "registry", "ui"):  # package docstrings only (and router.__version__)
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [m, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[m] = 2

    for m in sorted(RUNTIME):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import circles: {cycles}"
