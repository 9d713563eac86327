"""The layers point down: durable <- vtpm, certs <- vmcrypt.

Read from the source (every module's AST), not from what happens to be imported:
- nothing under vtpm/, certs/ or durable/ imports vmcrypt, anywhere in the file
  (inside functions and ``if TYPE_CHECKING:`` blocks too);
- durable/ imports none of vtpm, certs, vmcrypt;
- no import cycle among the modules of the four packages (imports that run:
  function-level ones count, ``if TYPE_CHECKING:`` blocks do not).
"""

from __future__ import annotations

from support.imports import PACKAGES, find_cycles, import_graph, imported_names

EVERY_IMPORT = imported_names(runtime_only=False)


def _top(name: str) -> str:
    return name.partition(".")[0]


def _offenders(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    rows = []
    for module, names in sorted(EVERY_IMPORT.items()):
        if _top(module) not in packages:
            continue
        bad = sorted(name for name in names if _top(name) in forbidden)
        if bad:
            rows.append(f"{module} imports {', '.join(bad)}")
    return rows


def test_vtpm_certs_and_durable_do_not_import_vmcrypt() -> None:
    offenders = _offenders(("vtpm", "certs", "durable"), ("vmcrypt",))
    assert not offenders, "lower layers import vmcrypt:\n  " + "\n  ".join(offenders)


def test_durable_imports_none_of_the_others() -> None:
    offenders = _offenders(("durable",), ("vtpm", "certs", "vmcrypt"))
    assert not offenders, "durable must be the bottom layer:\n  " + "\n  ".join(offenders)


def test_no_import_cycle_anywhere() -> None:
    cycles = find_cycles(import_graph(PACKAGES))
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_what_they_look_for() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph(PACKAGES)
    assert {"vmcrypt.cli_common", "certs.ca", "vmcrypt.ca_keys"} <= graph["vmcrypt.cli"]
    assert "vmcrypt.vtpm_command" in graph["vmcrypt.management"]
    assert "vtpm.engine" not in graph["vtpm.commands.nv"]  # only under TYPE_CHECKING there
    assert "vtpm.engine" in imported_names(runtime_only=False)["vtpm.commands.nv"]
