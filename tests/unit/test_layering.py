"""The layers, read from the source with ``ast`` (nothing is imported): the engine (specfuse_core) needs
neither its front doors (specfuse_integrations), the evaluation harness (specfuse_eval) nor the
benchmarks, never edits ``sys.path``, and its modules import each other without a cycle (imports inside
functions included; those under ``if TYPE_CHECKING:`` never run and are left out). The evaluation
harness does not depend on the front doors or the benchmarks either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` (``pkg.__init__`` is ``pkg``)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, at any depth (functions included), except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, absolute dotted name)`` of everything the module imports at run time: ``a.b`` for
    ``import a.b``, ``a.b`` for ``from a import b`` (``b`` a submodule or a name in ``a``), and the literal
    name of ``importlib.import_module("x")`` or ``__import__("x")``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            names += [(node.lineno, base if alias.name == "*" else f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append((node.lineno, node.args[0].value))
    return names


def sys_path_uses(path: Path) -> list[int]:
    """Lines that read or change ``sys.path`` (``sys.path...``, ``from sys import path``)."""
    tree = ast.parse(path.read_text(), str(path))
    sys_names = {"sys"} | {
        alias.asname for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names if alias.name == "sys" and alias.asname
    }  # fmt: skip
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            if isinstance(node.value, ast.Name) and node.value.id in sys_names:
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            if any(alias.name in ("path", "*") for alias in node.names):
                lines.append(node.lineno)
    return lines


def forbidden_imports(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in modules(package).items()
        for line, name in imported_names(module, path)
        if name.split(".")[0] in forbidden
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in its code, at run time); a name
    counts as the longest module it starts with (``pkg.mod.Class`` is ``pkg.mod``, ``pkg.Class`` is ``pkg``)."""
    found = modules(package)
    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        targets = set()
        for _, name in imported_names(module, path):
            parts = name.split(".")
            while parts and ".".join(parts) not in found:
                parts.pop()
            if parts:
                targets.add(".".join(parts))
        graph[module] = targets - {module}
    return graph


def test_the_core_imports_no_front_door_harness_or_benchmark():
    assert modules("specfuse_core"), "no modules found: the test reads the wrong folder"
    assert forbidden_imports("specfuse_core", ("specfuse_integrations", "specfuse_eval", "benchmarks")) == []


def test_the_core_never_touches_sys_path():
    uses = [f"{path.relative_to(ROOT)}:{line}" for path in modules("specfuse_core").values() for line in sys_path_uses(path)]
    assert uses == []


def test_the_core_modules_import_each_other_without_a_cycle():
    graph = import_graph("specfuse_core")
    assert graph["specfuse_core.loading"] and graph["specfuse_core.registry"]  # the graph is really built
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_eval_harness_imports_no_front_door_or_benchmark():
    if not modules("specfuse_eval"):
        pytest.skip("specfuse_eval has no modules yet")
    assert forbidden_imports("specfuse_eval", ("specfuse_integrations", "benchmarks")) == []
