"""The layers point down: durable <- vtpm, certs <- vmcrypt.

Read from the source (every module's AST), not from what happens to be imported:
- nothing under vtpm/, certs/ or durable/ imports vmcrypt, anywhere in the file
  (inside functions and ``if TYPE_CHECKING:`` blocks too);
- durable/ imports none of vtpm, certs, vmcrypt;
- the modules of certs/ and vmcrypt/ import each other without a cycle (imports that
  run: function-level ones count, ``if TYPE_CHECKING:`` blocks do not).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("durable", "vtpm", "certs", "vmcrypt")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, runtime_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement; with ``runtime_only``, not those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported(module: str, path: Path, runtime_only: bool) -> set[str]:
    """Dotted names of what ``module`` imports: for ``from X import y``, ``X.y`` when that is a module here."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in _import_nodes(tree, runtime_only):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            names.add(candidate if candidate in MODULES else base)
    # __import__("vmcrypt...") and importlib.import_module("vmcrypt...") with a literal name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and ((isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                     or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            names.add(node.args[0].value)
    return names


def _top(name: str) -> str:
    return name.partition(".")[0]


def _offenders(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    rows = []
    for module, path in MODULES.items():
        if _top(module) not in packages:
            continue
        bad = sorted(name for name in _imported(module, path, runtime_only=False) if _top(name) in forbidden)
        if bad:
            rows.append(f"{module} imports {', '.join(bad)}")
    return rows


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module that imports itself (Tarjan)."""
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


def test_vtpm_certs_and_durable_do_not_import_vmcrypt() -> None:
    offenders = _offenders(("vtpm", "certs", "durable"), ("vmcrypt",))
    assert not offenders, "lower layers import vmcrypt:\n  " + "\n  ".join(offenders)


def test_durable_imports_none_of_the_others() -> None:
    offenders = _offenders(("durable",), ("vtpm", "certs", "vmcrypt"))
    assert not offenders, "durable must be the bottom layer:\n  " + "\n  ".join(offenders)


def test_no_import_cycle_in_certs_and_vmcrypt() -> None:
    members = {m for m in MODULES if _top(m) in ("certs", "vmcrypt")}
    graph = {m: _imported(m, MODULES[m], runtime_only=True) & members for m in members}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_what_they_look_for() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    cli = _imported("vmcrypt.cli", MODULES["vmcrypt.cli"], runtime_only=True)
    assert {"vmcrypt.cli_common", "certs.ca", "vmcrypt.ca_keys"} <= cli
    assert "vmcrypt.vtpm_command" in _imported("vmcrypt.management", MODULES["vmcrypt.management"], runtime_only=True)
