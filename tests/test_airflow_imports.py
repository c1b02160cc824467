"""herd_airflow's imports go one way, read from the source (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = "herd_airflow"
# Each module may import only the modules before it: the DAG builder, the registry's tasks, the
# factory that chooses the operator, the operators, the Kubernetes manifests.
LAYERS = ["manifests", "local", "kubernetes", "gang", "factory", "registry", "mapped", "builder"]


def imported_modules(path: Path) -> set[str]:
    """The dotted names a file imports; ``from a import b`` counts as ``a`` and ``a.b`` (b may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = f"{PACKAGE}.{node.module or ''}".rstrip(".") if node.level else node.module or ""
            found |= {module, *(f"{module}.{alias.name}" for alias in node.names)}
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module name -> the modules of the same package it imports."""
    modules = {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
    return {
        path.stem: {name.split(".")[1] for name in imported_modules(path)
                    if name.startswith(f"{PACKAGE}.") and name.split(".")[1] in modules} - {path.stem}
        for path in package.glob("*.py") if path.stem != "__init__"
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle, as the modules along it, or [] if there is none."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return []
        for imported in sorted(graph[module]):
            if cycle := visit(imported, [*path, module]):
                return cycle
        done.add(module)
        return []

    for module in sorted(graph):
        if cycle := visit(module, []):
            return cycle
    return []


def test_a_cycle_is_found():
    assert find_cycle({"factory": {"kubernetes"}, "gang": {"kubernetes"}, "kubernetes": {"gang"}}) == [
        "kubernetes", "gang", "kubernetes"]
    assert find_cycle({"factory": {"kubernetes", "local"}, "kubernetes": {"local"}, "local": set()}) == []


def test_herd_airflow_has_no_import_cycle():
    assert find_cycle(import_graph(REPO / PACKAGE)) == []


def test_herd_airflow_imports_go_down_the_layers():
    graph = import_graph(REPO / PACKAGE)
    assert set(graph) == set(LAYERS), "place each module of herd_airflow in LAYERS"
    for module, imported in graph.items():
        below = set(LAYERS[:LAYERS.index(module)])
        assert imported <= below, f"{module} imports {sorted(imported - below)}, which are not below it"


def test_the_airflow_side_runs_stages_as_processes_and_never_imports_them():
    for path in (REPO / PACKAGE).glob("*.py"):
        stage_code = {name for name in imported_modules(path) if name == "tasks" or name.startswith("tasks.")}
        assert not stage_code, f"{path.name} imports {sorted(stage_code)}"
