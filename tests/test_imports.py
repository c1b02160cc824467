"""The import graph of ``tasks/``, read with ``ast`` (nothing is imported): no cycle between its top-level packages,
and no stage package importing another stage package except through a loader of that stage's output."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from herd.pipeline import STAGE_NAMES

TASKS = Path(__file__).resolve().parent.parent / "tasks"
# ``tasks.registry`` is a library, not a stage: the Model Registry's versions and aliases, and the verdict that the
# gate stage, ``herd registry promote`` and the evaluate DAG share.
STAGES = set(STAGE_NAMES)
# What another stage may import of a stage: the modules that read its output.
LOADERS = {
    "tasks.problems.item",  # the problems output's records
    "tasks.problems.checkers",  # their checkers
    "tasks.problems.chat",  # rendering them as chat
    "tasks.tokenizer.special_tokens",  # the tokenizer's special tokens
    "tasks.rl.hard_prompts",  # the prompts an RL run leaves: DPO's prompt set
    "tasks.guards.loader",  # the trained guards, for the safety stage and ``herd safety goat``
}


def module_name(path: Path) -> str:
    parts = path.relative_to(TASKS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = TASKS.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(path: Path) -> set[str]:
    """The ``tasks`` modules ``path`` imports, anywhere in it (function bodies and TYPE_CHECKING blocks too)."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package ``level - 1`` above this module's
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            # ``from tasks.x import y`` imports module ``tasks.x.y`` when there is one.
            found.update(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names)
    return {name for name in found if name.split(".")[0] == "tasks"}


def edges() -> set[tuple[str, str]]:
    """(importer, imported) between modules of different top-level packages of ``tasks``.

    Entry points (``__main__``) are left out: nothing imports them, so they close no cycle.
    """
    found = set()
    for path in TASKS.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        importer = module_name(path)
        found.update((importer, target) for target in imported(path) if top(target) != top(importer))
    return found


def top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found



def test_no_import_cycle_between_the_packages_of_tasks():
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, target in edges():
        graph[top(importer)].add(top(target))
    assert cycles(graph) == []


def test_no_stage_imports_another_stage_but_its_loaders():
    crossing = sorted((importer, target) for importer, target in edges()
                      if top(importer) in STAGES and top(target) in STAGES and target not in LOADERS)
    assert crossing == []


def test_the_reader_sees_a_cycle_and_a_crossing():
    """The checks above can fail: the pretrain <-> codistill cycle this layout removed would be found."""
    assert cycles({"pretrain": {"codistill"}, "codistill": {"pretrain", "training"}}) == [["codistill", "pretrain"]]
    assert "tasks.training.loop" in imported(TASKS / "pretrain" / "stage.py")
    assert "tasks.rl.hard_prompts" in imported(TASKS / "dpo" / "stage.py")
