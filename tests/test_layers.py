"""The package's layers (docs/design.md), read from its imports (AST):
imports point down or sideways, never up; no import cycle; a function-level
import is for heavy packages only; no module over ~450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rlrs"

# module (or package) -> layer. A module imports only from its own layer or below.
LAYERS = {
    # L0 base: no rlrs imports but each other
    "rlrs": 0,
    "rlrs.__main__": 5,
    "rlrs.errors": 0,
    "rlrs.atomic": 0,
    "rlrs.components": 0,
    "rlrs.schedule": 0,
    "rlrs.rdata": 0,
    "rlrs.paths": 0,
    "rlrs.rundir": 0,
    "rlrs.tags": 0,
    "rlrs.paper": 0,
    "rlrs.parametrization": 0,
    "rlrs.vega": 0,
    "rlrs.provenance": 0,
    # L1 config
    "rlrs.config": 1,
    "rlrs.data": 1,
    "rlrs.tunables": 1,
    "rlrs.executor": 1,
    # L2 models, training, studies
    "rlrs.model": 2,
    "rlrs.train": 2,
    "rlrs.parallel": 2,
    "rlrs.progress": 0,
    "rlrs.study": 2,
    # L3 running and storing
    "rlrs.launch": 3,
    "rlrs.tune": 3,
    "rlrs.select_lr": 3,
    "rlrs.coordcheck": 3,
    "rlrs.db": 3,
    # L4 the numbers
    "rlrs.analysis": 4,
    # L5 presentation and the command
    "rlrs.plots": 5,
    "rlrs.sweep_plots": 5,
    "rlrs.scaling_plots": 5,
    "rlrs.scaling_report": 5,
    "rlrs.report": 5,
    "rlrs.report_text": 5,
    "rlrs.report_health": 5,
    "rlrs.cli": 5,
}

# Third-party packages slow enough to import that a light command must not
# pay for them: the only reason for a function-level import.
HEAVY = {"torch", "scipy", "altair", "vl_convert", "polars", "pyarrow", "tokenizers", "tqdm", "duckdb", "submitit"}

MAX_LINES = 450


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def layer_of(name: str) -> int:
    """A module's layer: its own entry, else its package's (rlrs.db.schema -> rlrs.db)."""
    while name not in LAYERS:
        name = name.rpartition(".")[0]
        assert name not in ("", "rlrs"), "module without a layer"
    return LAYERS[name]


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import of rlrs or a
    third-party package; `from rlrs import x` names rlrs.x when x is a module.
    Imports under `if TYPE_CHECKING:` are not executed and are left out."""
    tree = ast.parse(path.read_text())
    top = set()
    for node in tree.body:
        top |= {id(n) for n in ast.walk(node)} if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else set()
    checking = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    known = modules()
    out = []
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = list(
                dict.fromkeys(
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
                )
            )
        for name in names:
            out.append((name, node.lineno, id(node) in top))
    return out


def rlrs_target(name: str) -> str | None:
    return name if name == "rlrs" or name.startswith("rlrs.") else None


def heavy_modules() -> set[str]:
    """rlrs modules that import a HEAVY package at module level, directly or
    through another rlrs module: importing one costs what the package costs."""
    mods = modules()
    edges = {m: [n for n, _, top in imports(p) if top] for m, p in mods.items()}
    heavy = {m for m, names in edges.items() if any(n.split(".")[0] in HEAVY for n in names)}
    changed = True
    while changed:
        changed = False
        for m, names in edges.items():
            if m not in heavy and any(n in heavy for n in names if rlrs_target(n)):
                heavy.add(m)
                changed = True
    return heavy


def test_every_module_has_a_layer():
    def has_layer(m: str) -> bool:
        return m in LAYERS or any(m.startswith(k + ".") for k in LAYERS if k != "rlrs")

    assert [m for m in modules() if not has_layer(m)] == []


def test_imports_point_down():
    upward = []
    for mod, path in modules().items():
        for name, line, _ in imports(path):
            target = rlrs_target(name)
            if target and target != "rlrs" and layer_of(target) > layer_of(mod):
                upward.append(f"{path.name}:{line}: {mod} (L{layer_of(mod)}) imports {target} (L{layer_of(target)})")
    assert upward == []


def test_function_level_imports_are_for_heavy_packages_only():
    heavy = heavy_modules()
    lazy = []
    for mod, path in modules().items():
        for name, line, top in imports(path):
            if top:
                continue
            target = rlrs_target(name)
            if target is None and name.split(".")[0] in HEAVY:
                continue  # a heavy third-party package
            if target is not None and target in heavy:
                continue  # an rlrs module that imports one (torch, the plotting stack, the database engine)
            lazy.append(f"{path.name}:{line}: {mod} imports {name} inside a function")
    assert lazy == []


def test_no_import_cycle():
    mods = modules()
    graph = {m: {n for n, _, top in imports(p) if top and rlrs_target(n) in mods and n != m} for m, p in mods.items()}
    # A package's __init__ importing its own submodules is not a cycle of concepts.
    graph = {m: {n for n in deps if not n.startswith(m + ".")} for m, deps in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            cycles.append(" -> ".join(stack[stack.index(m) :] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph[m]):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert cycles == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_the_line_budget(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def test_the_checks_can_fail(tmp_path):
    """The AST reader sees an upward, a lazy and a TYPE_CHECKING import for what they are."""
    src = tmp_path / "probe.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nfrom rlrs import report\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "def f():\n    from rlrs.study import plan\n    import scipy\n"
    )
    got = imports(src)
    assert ("rlrs.report", 2, True) in got and ("rlrs.study.plan", 6, False) in got
    assert ("scipy", 7, False) in got and not any(n == "torch" for n, _, _ in got)
    assert "rlrs.report" in heavy_modules() and "rlrs.study.plan" not in heavy_modules()
