"""The library surface: every name in ``vtpm.__all__`` and ``vmcrypt.__all__`` resolves and says what it is for.

Also: the session operations a library user calls (Management, UserSession and
the administration half) all carry docstrings, every public definition of ``certs``,
``durable``, ``vtpm`` and ``vmcrypt`` (subpackages included) does, counted both on the imported
modules and on the source alone (``scripts/docstring_coverage.py``, which also reaches the Alembic
migrations that cannot be imported outside Alembic), and
``py.typed`` ships in both packages.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
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
    assert sorted(missing) == []


def _modules(package: ModuleType) -> list[ModuleType]:
    """The package and every public module under it, subpackages included, but those under ``_NOT_WALKED``
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


# Packages not imported by the walk: vmcrypt's migrations (their Alembic env module runs only inside Alembic).
# The source count (``test_the_source_count_finds_every_definition_documented``) covers them.
_NOT_WALKED = frozenset({"vmcrypt.migrations"})


def _walked(name: str) -> bool:
    """Whether the walk imports module ``name``: not when it is, or lies under, a package in ``_NOT_WALKED``."""
    return not any(name == left_out or name.startswith(f"{left_out}.") for left_out in _NOT_WALKED)


@pytest.mark.parametrize("package", [certs, durable, vtpm, vmcrypt], ids=lambda p: p.__name__)
def test_every_public_definition_of_the_package_is_documented(package: ModuleType) -> None:
    modules = _modules(package)
    assert len(modules) > 1
    assert [name for module in modules for name in _undocumented_in(module)] == []


def test_the_modules_left_out_exist() -> None:
    names = {info.name for package in (vtpm, vmcrypt)
             for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")}
    assert _NOT_WALKED <= names


def test_the_walk_reaches_subpackages() -> None:
    names = {module.__name__ for package in (vtpm, vmcrypt) for module in _modules(package)}
    assert {"vtpm.commands.nv", "vtpm.commands.ea.signed", "vtpm.entities.pcr", "vtpm.marshal.fast",
            "vtpm.server.loop", "vtpm.quote", "vmcrypt.container", "vmcrypt.providers.native", "vmcrypt.cli",
            "vmcrypt.trust.verifier", "vmcrypt.trust.images", "vmcrypt.management", "vmcrypt.trust",
            "vmcrypt.trust.pki", "vmcrypt.trust.demo", "vmcrypt.cli_inventory", "vmcrypt.service_app"} <= names
    assert not any(part.startswith("_") for name in names for part in name.split("."))
    assert not any(name.startswith("vmcrypt.migrations") for name in names)


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


# ----------------------------------------------------------------------------- the source count

_ROOT = Path(__file__).resolve().parents[2]


def _coverage_script() -> ModuleType:
    """``scripts/docstring_coverage.py`` as a module (scripts/ is not a package); imported, not run."""
    name = "docstring_coverage"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _ROOT / "scripts" / "docstring_coverage.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[name]


@functools.cache
def _counted(package: str) -> tuple:
    """The script's count of one package of this tree, parsed once per run (parsing vtpm takes about a second)."""
    return tuple(_coverage_script().package_definitions(_ROOT, package))


@pytest.mark.parametrize("package", ["certs", "durable", "vtpm", "vmcrypt"])
def test_the_source_count_finds_every_definition_documented(package: str) -> None:
    assert package in _coverage_script().PACKAGES
    found = _counted(package)
    assert len(found) > 10
    missing = [f"{f.path.relative_to(_ROOT)}:{f.line}: {f.name}" for f in found if not f.documented]
    assert missing == [], "public definitions without a docstring:\n" + "\n".join(missing)


def test_the_source_count_reaches_the_migrations() -> None:
    names = {f.name for f in _counted("vmcrypt")}
    assert {"vmcrypt.migrations.versions.0001_model.upgrade", "vmcrypt.trust.workload.known_hosts",
            "vmcrypt.inventory.Inventory.vms"} <= names


def test_the_source_count_finds_what_is_missing(tmp_path: Path) -> None:
    source = tmp_path / "scratch" / "mod.py"
    source.parent.mkdir()
    source.write_text('''
class Shown:
    """Says why."""

    def told(self):
        """Has its own."""

    def bare(self):
        pass

    @property
    def size(self):
        return 1

    @size.setter
    def size(self, value):
        pass

    def _inner(self):
        pass


def plain():
    pass


def _private():
    pass
''')
    found = _coverage_script().package_definitions(tmp_path, "scratch")
    assert [(f.name, f.documented) for f in found] == [
        ("scratch.mod.Shown", True), ("scratch.mod.Shown.told", True), ("scratch.mod.Shown.bare", False),
        ("scratch.mod.Shown.size", False), ("scratch.mod.plain", False)]
