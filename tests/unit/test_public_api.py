"""The library surface: every name in ``vtpm.__all__`` and ``vmcrypt.__all__`` resolves and says what it is for.

Also: the session operations a library user calls (Management, UserSession and
the administration half) all carry docstrings, every public definition of ``certs``,
``durable``, ``vtpm`` (subpackages included) and vmcrypt but the modules changed elsewhere does, and
``py.typed`` ships in both packages.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import certs
import durable
import vmcrypt
import vtpm
from vmcrypt.admin_operations import AdminOperations


def _own_doc(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    # a dataclass without a docstring gets its signature as one: that says nothing
    name = getattr(obj, "__name__", "")
    return "" if doc.startswith(f"{name}(") else doc


@pytest.mark.parametrize("package", [vtpm, vmcrypt], ids=lambda p: p.__name__)
def test_every_exported_name_resolves_and_is_documented(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert names == sorted(set(names))
    undocumented = [n for n in names if not _own_doc(getattr(package, n))]
    assert undocumented == []
    assert set(names) <= set(dir(package))


# Public methods still without a docstring; the list may only shrink (a stale entry fails too).
_NOT_YET_DOCUMENTED = frozenset({
    "vmcrypt.UserSession.inventory",
})


def _public_methods(cls: type) -> dict[str, object]:
    """The public methods and properties ``cls`` has from this project (not from object, Exception, enum ...)."""
    found: dict[str, object] = {}
    for name in dir(cls):
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if name.startswith("_") or owner is None or owner.__module__.split(".")[0] not in ("vmcrypt", "vtpm"):
            continue
        raw = vars(owner)[name]
        if isinstance(raw, property):
            found[name] = raw
        elif callable(raw) and not inspect.isclass(raw) or isinstance(raw, (staticmethod, classmethod)):
            found[name] = getattr(cls, name)
    return found


def test_every_public_method_of_an_exported_class_is_documented() -> None:
    missing = set()
    for package in (vmcrypt, vtpm):
        for export in package.__all__:
            cls = getattr(package, export)
            if inspect.isclass(cls):
                missing |= {f"{package.__name__}.{export}.{name}" for name, member in _public_methods(cls).items()
                            if not inspect.getdoc(member)}
    assert missing - _NOT_YET_DOCUMENTED == set()
    assert _NOT_YET_DOCUMENTED - missing == set(), "documented now: drop them from _NOT_YET_DOCUMENTED"


def _modules(package: ModuleType) -> list[ModuleType]:
    """The package and every public module under it, subpackages included, but those in ``_NOT_WALKED``
    (private modules are left out: ``__main__`` would run a command line)."""
    return [package] + [importlib.import_module(info.name)
                        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
                        if not any(part.startswith("_") for part in info.name.split(".")) and _walked(info.name)]


def _undocumented_in(module: ModuleType) -> list[str]:
    """Public functions and classes defined in ``module``, and their own public methods and properties,
    whose own docstring is missing (an inherited one does not count: these packages define few overrides)."""
    missing = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) and not (obj.__doc__ or "").strip():
            missing.append(f"{module.__name__}.{name}")
        elif inspect.isclass(obj):
            doc = (vars(obj).get("__doc__") or "").strip()  # getdoc would take a base class's
            if not doc or doc.startswith(f"{name}("):  # a dataclass's generated signature says nothing
                missing.append(f"{module.__name__}.{name}")
            for attr, raw in vars(obj).items():
                target = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
                if not attr.startswith("_") and inspect.isfunction(target) and not (target.__doc__ or "").strip():
                    missing.append(f"{module.__name__}.{name}.{attr}")
    return missing


# Modules (and packages) whose docstrings are not complete yet and that are being changed elsewhere, so the set is
# not checked for staleness: drop an entry once its module is documented. Every other module is walked. (vmcrypt's
# migrations: their Alembic env module runs only inside Alembic.)
_NOT_WALKED = frozenset({
    "vmcrypt.cli_inventory", "vmcrypt.cli_trust",
    "vmcrypt.inventory", "vmcrypt.inventory_db", "vmcrypt.inventory_schema", "vmcrypt.management",
    "vmcrypt.migrations", "vmcrypt.service", "vmcrypt.service_app", "vmcrypt.trust",
})

# Modules walked although a package above them is in _NOT_WALKED: the documented part of such a package.
_WALKED_INSIDE = frozenset({
    "vmcrypt.trust.collect", "vmcrypt.trust.evidence", "vmcrypt.trust.host_boot", "vmcrypt.trust.images",
    "vmcrypt.trust.manufacturer", "vmcrypt.trust.measurements", "vmcrypt.trust.policy", "vmcrypt.trust.trust_policy",
    "vmcrypt.trust.verifier",
})


def _walked(name: str) -> bool:
    """Whether the walk takes module ``name``: the longest of its dotted prefixes (itself included) named in
    ``_WALKED_INSIDE`` or ``_NOT_WALKED`` decides; a module under neither is walked."""
    parts = name.split(".")
    for n in range(len(parts), 1, -1):
        prefix = ".".join(parts[:n])
        if prefix in _WALKED_INSIDE:
            return True
        if prefix in _NOT_WALKED:
            return False
    return True


@pytest.mark.parametrize("package", [certs, durable, vtpm, vmcrypt], ids=lambda p: p.__name__)
def test_every_public_definition_of_the_package_is_documented(package: ModuleType) -> None:
    modules = _modules(package)
    assert len(modules) > 1
    assert [name for module in modules for name in _undocumented_in(module)] == []


def test_the_modules_left_out_exist() -> None:
    names = {info.name for package in (vtpm, vmcrypt)
             for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")}
    assert _NOT_WALKED <= names
    assert _WALKED_INSIDE <= names


def test_each_module_walked_inside_lies_in_a_package_left_out() -> None:
    # otherwise the entry would change nothing: the module is walked anyway
    assert all(any(name.startswith(f"{left_out}.") for left_out in _NOT_WALKED) for name in _WALKED_INSIDE)


def test_the_walk_reaches_subpackages() -> None:
    names = {module.__name__ for package in (vtpm, vmcrypt) for module in _modules(package)}
    assert {"vtpm.commands.nv", "vtpm.commands.ea.signed", "vtpm.entities.pcr", "vtpm.marshal.fast",
            "vtpm.server.loop", "vtpm.quote", "vmcrypt.container", "vmcrypt.providers.native", "vmcrypt.cli",
            "vmcrypt.trust.verifier", "vmcrypt.trust.images"} <= names
    assert not any(part.startswith("_") for name in names for part in name.split("."))
    assert not {"vmcrypt.management", "vmcrypt.trust", "vmcrypt.trust.pki", "vmcrypt.trust.demo",
                "vmcrypt.cli_inventory"} & names


def test_an_undocumented_definition_is_found() -> None:
    class Shown:
        """Says why."""

        def told(self) -> None:
            """Has its own."""

        def bare(self) -> None:
            pass

        @property
        def size(self) -> int:
            return 1

    def plain() -> None:
        pass

    class Inherits(ValueError):
        pass

    module = ModuleType("scratch")
    for obj in (Shown, plain, Inherits):
        obj.__module__ = module.__name__
        setattr(module, obj.__name__, obj)
    assert _undocumented_in(module) == ["scratch.Shown.bare", "scratch.Shown.size", "scratch.plain",
                                          "scratch.Inherits"]


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        vmcrypt.Nope  # noqa: B018


def test_session_operations_are_documented() -> None:
    missing = [f"{cls.__name__}.{name}" for cls in (vmcrypt.Management, vmcrypt.UserSession, AdminOperations)
               for name, member in vars(cls).items()
               if not name.startswith("_") and callable(member) and not inspect.getdoc(member)]
    assert missing == []


def test_encrypt_takes_the_cli_options_by_name() -> None:
    parameters = inspect.signature(vmcrypt.UserSession.encrypt).parameters
    assert {"include_disks", "provider"} <= set(parameters)
    assert all(parameters[p].kind is inspect.Parameter.KEYWORD_ONLY for p in ("include_disks", "provider"))


@pytest.mark.parametrize("package", [vtpm, vmcrypt], ids=lambda p: p.__name__)
def test_packages_declare_their_type_hints(package: object) -> None:
    assert (Path(package.__file__).parent / "py.typed").is_file()  # type: ignore[attr-defined]
