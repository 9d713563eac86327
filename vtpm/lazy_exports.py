"""PEP 562 lazy exports for a package's ``__init__``: names are imported from their modules on first use.

Both ``vtpm`` and ``vmcrypt`` list their public surface in one table (name -> module) and hand it
here, so ``import vtpm`` or ``import vmcrypt`` loads nothing more than the package itself, and a
light client (``vtpm.client``) never pulls in the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose globals are ``namespace``: each name of
    ``exports`` is imported from its module when first asked for, then kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
