"""The project's import graph, read from the source (every module's AST), for the layer tests.

Reading the source rather than ``sys.modules`` means an import hidden inside a
function counts as much as one at the top of a module. With ``runtime_only``,
imports under ``if TYPE_CHECKING:`` (type hints, never run) are left out.
Literal ``__import__("x")`` and ``importlib.import_module("x")`` calls count too.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("durable", "vtpm", "certs", "vmcrypt")

Graph = dict[str, set[str]]


def module_files(root_packages: Iterable[str] = PACKAGES, root: Path = REPO_ROOT) -> dict[str, Path]:
    """Every module of the packages: dotted name -> source file (a package is its __init__)."""
    modules: dict[str, Path] = {}
    for package in root_packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(tree: ast.AST, runtime_only: bool) -> Iterator[ast.Import | ast.ImportFrom | ast.Call]:
    """Import statements and literal dynamic-import calls, skipping TYPE_CHECKING blocks if asked."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            yield node
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _named(module: str, is_package: bool, statement: ast.Import | ast.ImportFrom | ast.Call,
           known: dict[str, Path]) -> Iterator[str]:
    """Dotted names a statement imports: for ``from X import y``, ``X.y`` when that is a module here."""
    if isinstance(statement, ast.Call):
        yield statement.args[0].value  # type: ignore[attr-defined]
        return
    if isinstance(statement, ast.Import):
        yield from (alias.name for alias in statement.names)
        return
    base = statement.module or ""
    if statement.level:  # relative: from the module's own package upwards
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(statement.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    for alias in statement.names:
        candidate = f"{base}.{alias.name}"
        yield candidate if alias.name != "*" and candidate in known else base


def imported_names(runtime_only: bool = True, root_packages: Iterable[str] = PACKAGES,
                   root: Path = REPO_ROOT) -> dict[str, set[str]]:
    """module -> every dotted name it imports (ours or not), e.g. to find a forbidden package."""
    cached = _imported_names(runtime_only, tuple(root_packages), root)
    return {module: set(names) for module, names in cached.items()}  # a copy: callers may change theirs


@functools.lru_cache(maxsize=None)
def _imported_names(runtime_only: bool, root_packages: tuple[str, ...], root: Path) -> dict[str, frozenset[str]]:
    """The source is read and parsed once per test session and question (the layer, layout and wire tests ask)."""
    modules = module_files(root_packages, root)
    names: dict[str, frozenset[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        names[module] = frozenset(name for statement in _statements(tree, runtime_only)
                                  for name in _named(module, is_package, statement, modules))
    return names


def _ours(name: str, modules: Iterable[str]) -> str | None:
    """``name`` itself if it is one of our modules, else its longest prefix that is."""
    known = set(modules)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root_packages: Iterable[str] = PACKAGES, root: Path = REPO_ROOT,
                 runtime_only: bool = True) -> Graph:
    """module -> the modules of ``root_packages`` it imports (itself excluded)."""
    names = imported_names(runtime_only, root_packages, root)
    graph: Graph = {}
    for module, imported in names.items():
        targets = {found for name in imported if (found := _ours(name, names))}
        targets.discard(module)
        graph[module] = targets
    return graph


def within(graph: Graph, package: str) -> Graph:
    """The part of the graph among the modules of one package."""

    def inside(module: str) -> bool:
        return module == package or module.startswith(package + ".")

    return {m: {t for t in targets if inside(t)} for m, targets in graph.items() if inside(m)}


def closure(graph: Graph, start: Iterable[str]) -> set[str]:
    """Every module that importing ``start`` loads (the modules themselves included)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def find_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles
