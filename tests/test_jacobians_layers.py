"""The Jacobian engine's modules import in one direction only (issue 15).

An AST walk of ``src/bpttbench`` builds the intra-package import graph (every ``import``,
including those inside functions, so a lazy import that hides a cycle is found too):
each ``bpttbench.jacobians`` module may import only modules of a lower layer of
:data:`LAYERS`, and no cycle of the whole package passes through the engine. Each engine
module also imports on its own in a fresh interpreter, and none is over 500 lines.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "bpttbench.jacobians"
#: the engine's layers, lowest first: a module imports only from earlier entries
LAYERS = ("frame", "backends", "analytic", "cupy_kernels", "cupy_forward", "cupy_backend",
          "registry", "loop", "spectrum", "chain", "__init__")
ENGINE_FILES = sorted((SRC / "bpttbench" / "jacobians").glob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (SRC / "bpttbench").rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``path`` imports (anywhere in the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import sub" imports the submodule; "from pkg import name" the package
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _layer(module: str) -> int:
    short = "__init__" if module == PKG else module.removeprefix(PKG + ".")
    return LAYERS.index(short)


def test_every_engine_module_has_a_layer():
    names = {p.stem for p in ENGINE_FILES}
    assert names == set(LAYERS), f"add new modules to LAYERS: {sorted(names ^ set(LAYERS))}"


def test_engine_imports_go_down_the_layers_only():
    modules = _all_modules()
    bad = []
    for path in ENGINE_FILES:
        src = _module_name(path)
        for dst in _imports(path, modules):
            if dst == PKG or dst.startswith(PKG + "."):
                if _layer(dst) >= _layer(src):
                    bad.append(f"{src} -> {dst}")
    assert not bad, "imports against the layer order: " + ", ".join(sorted(bad))


def test_no_import_cycle_through_the_engine():
    """Depth-first search of the package's import graph from every engine module."""
    modules = _all_modules()
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    for start in (_module_name(p) for p in ENGINE_FILES):
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    pytest.fail("import cycle: " + " -> ".join((*trail, start)))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: p.stem)
def test_module_imports_alone_in_a_fresh_interpreter(path):
    name = _module_name(path)
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert proc.returncode == 0, f"import {name} failed:\n{proc.stderr[-2000:]}"


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: p.stem)
def test_module_is_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 500, f"{path.name}: {lines} lines (split it: one job per module)"
