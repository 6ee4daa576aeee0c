"""The package's import graph, read from the source: one-way layers, no cycles, no phiforge import hidden in a
function (outside the CLI, which defers them so that `phiforge --help` does not load torch)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "phiforge"

# Lowest first: a module may import modules of its own layer or below, never above.
BASE = {"errors", "rundir", "datahome", "machine", "sandbox", "answers", "config", "stages"}
TOP = {"cli", "pipeline", "experiment", "report", "runcompare", "plan", "__init__"}
LAYERS = {"base": 0, "lm": 1, "data": 2, "train": 3, "eval": 4, "serve": 5, "top": 6}
DEFERRED_OK = {"phiforge.cli"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if len(parts) == 2 and parts[1] in BASE:
        return "base"
    if len(parts) == 2 and parts[1] in TOP:
        return "top"
    if parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module}: not in any layer; add it to a package or to BASE/TOP in {__file__}")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported phiforge module, line, inside a function) for every import in the file, TYPE_CHECKING ones too."""
    me = module_name(path)
    base = me if path.name == "__init__.py" else me.rpartition(".")[0]

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str | None] = []
            if isinstance(child, ast.Import):
                targets = [resolve(a.name) for a in child.names if a.name.split(".")[0] == "phiforge"]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    b = base
                    for _ in range(child.level - 1):
                        b = b.rpartition(".")[0]
                    full = f"{b}.{child.module}" if child.module else b
                else:
                    full = child.module or ""
                if full.split(".")[0] == "phiforge":
                    targets = [resolve(f"{full}.{a.name}") or resolve(full) for a in child.names]
            found.extend((t, child.lineno, in_function) for t in targets if t and t != me)
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t, _, _ in imports(p, mods)} for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    mods = modules()
    up = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {t} ({layer(m)} -> {layer(t)})"
          for m, p in mods.items() for t, line, _ in imports(p, mods)
          if LAYERS[layer(t)] > LAYERS[layer(m)]]
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_no_phiforge_import_inside_a_function():
    mods = modules()
    hidden = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {t} inside a function"
              for m, p in mods.items() if m not in DEFERRED_OK for t, line, inner in imports(p, mods) if inner]
    assert not hidden, "\n".join(hidden)


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert layer("phiforge.lm.model") == "lm" and layer("phiforge.errors") == "base" and layer("phiforge.cli") == "top"
    with pytest.raises(AssertionError, match="not in any layer"):
        layer("phiforge.stray")
