"""The library surface: every name in ``vtpm.__all__`` and ``vmcrypt.__all__`` resolves and says what it is for.

Also: the session operations a library user calls (Management, UserSession and
the administration half) all carry docstrings, and ``py.typed`` ships in both packages.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

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
