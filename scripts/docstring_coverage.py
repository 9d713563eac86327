#!/usr/bin/env python3
"""Count public definitions and those with a docstring, per package or per module, from the source alone.

  python scripts/docstring_coverage.py                 # per package
  python scripts/docstring_coverage.py --modules       # modules with something missing
  python scripts/docstring_coverage.py --missing       # every undocumented definition, as path:line: name

A public definition is a top-level function or class whose name has no leading underscore, and the
public methods and properties of such a class (a property's setter is not counted apart). Nothing is
imported, so any tree can be counted (e.g. an older commit unpacked by ``git archive``); the unit test
``tests/unit/test_public_api.py`` holds the packages to it through ``package_definitions``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from vtpm.cli_output import quiet_broken_pipe

PACKAGES = ("certs", "durable", "vmcrypt", "vtpm")
Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass(frozen=True)
class Found:
    """One public definition: where it is and whether it has a docstring."""

    path: Path
    line: int
    name: str
    documented: bool


def _public(node: ast.stmt) -> bool:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
        return False
    # a property's setter or deleter shares the getter's name and docstring
    return not any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in node.decorator_list)


def definitions(path: Path, module: str) -> list[Found]:
    """The public definitions of one source file, in order."""
    found = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if not _public(node):
            continue
        assert isinstance(node, Definition)
        found.append(Found(path, node.lineno, f"{module}.{node.name}", ast.get_docstring(node) is not None))
        if isinstance(node, ast.ClassDef):
            found += [Found(path, sub.lineno, f"{module}.{node.name}.{sub.name}", ast.get_docstring(sub) is not None)
                      for sub in node.body if _public(sub) and not isinstance(sub, ast.ClassDef)]
    return found


def package_definitions(root: Path, package: str) -> list[Found]:
    """The public definitions of every module of ``package`` under ``root`` (subpackages included), by path."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        found += definitions(path, ".".join(path.relative_to(root).with_suffix("").parts))
    return found


def main(argv: list[str] | None = None) -> int:
    """Print the counts; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".", type=Path, help="the tree holding the packages (default .)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--modules", action="store_true", help="also list the modules with something missing")
    shown.add_argument("--missing", action="store_true", help="also list every undocumented definition")
    args = parser.parse_args(argv)
    totals: dict[str, list[int]] = {}
    for package in PACKAGES:
        by_path: dict[Path, list[Found]] = {}
        for f in package_definitions(args.root, package):
            by_path.setdefault(f.path, []).append(f)
        for path, found in by_path.items():
            missing = [f for f in found if not f.documented]
            counts = totals.setdefault(package, [0, 0])
            counts[0] += len(found) - len(missing)
            counts[1] += len(found)
            if args.modules and missing:
                print(f"{len(missing):4d} missing of {len(found):4d}  {path.relative_to(args.root)}")
            if args.missing:
                for f in missing:
                    print(f"{f.path.relative_to(args.root)}:{f.line}: {f.name}")
    for package, (documented, total) in totals.items():
        print(f"{package}: {documented}/{total} documented, {total - documented} missing")
    return 0


if __name__ == "__main__":
    with quiet_broken_pipe():
        sys.exit(main())
