"""Files as data, for before/after comparisons."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every regular file under ``directory`` (hidden journal/temp files included) with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def refuse_writes(file: Any, *, every: bool = False) -> None:
    """Make a ``durable.prealloc.PreallocatedFile`` fail the writes of its records (EBADF) as a dead
    disk would, by replacing the descriptor they go through (O_DIRECT where used, else the page-cache
    one) with a read-only one; ``every``: its other descriptor too (erasing fails as well)."""
    names = ("_fd", "_direct_fd") if every else ("_direct_fd" if file.direct else "_fd",)
    for name in names:
        good = getattr(file, name)
        if good >= 0:
            setattr(file, name, os.open(file.path, os.O_RDONLY))
            os.close(good)
