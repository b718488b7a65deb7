"""The package's shape (issue 15): no import cycle anywhere in ``src/bpttbench`` (lazy imports
inside functions included), no module over 500 lines, and the planning layer and the
contract importable without torch (tests/test_torch_free.py runs them without it).

A module's implicit import of its own parent packages is not an edge: Python loads
``a/__init__`` before ``a.b`` whatever ``a.b`` imports, so only imports between modules that
are not each other's ancestors can close a cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import bpttbench

ROOT = Path(bpttbench.__file__).parent
MAX_LINES = 500


def _module_name(path: Path, root: Path) -> tuple[str, list[str]]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), parts
    return ".".join(parts), parts[:-1]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports (at top level or inside functions)."""
    deps: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name, package = _module_name(path, root)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)  # submodules
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        deps[name] = found
    return {m: {d for d in ds if d in deps and d != m and not m.startswith(d + ".")}
            for m, ds in deps.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 80  # every module was read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "bpttbench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text("from .sub.a import f\n")
    assert cycles(import_graph(pkg)) == [["bpttbench.b", "bpttbench.sub.a"]]


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
