"""Crash-safe file replacement: a reader sees the old file or the new one, never a mix.

The new content goes to a temporary file in the same directory, is flushed
and fsync'd, renamed over the target, and the directory is fsync'd so the
rename itself survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Kept from when this module was part of vmcrypt: crash recovery finds temp files by this prefix.
TEMP_PREFIX = ".vmcrypt-tmp-"


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(target: Path) -> Path:
    """A fresh temporary name next to ``target`` (same directory, so the rename stays atomic), with a
    random suffix so concurrent writers never share one and a prefix that marks leftovers as temporary."""
    return target.with_name(f"{TEMP_PREFIX}{target.name}-{secrets.token_hex(6)}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block ends cleanly.

    ``mode`` defaults to the existing file's permission bits, else 0600. On any
    exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o600
    temp = temp_path_for(target)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # never let clean-up hide the real failure
            os.unlink(temp)
        if isinstance(exc, OSError):
            exc.add_note(f"while writing {target}; it was left as it was")
        raise
    fsync_directory(target.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files left by a process that died mid-write; return what was removed."""
    removed = []
    for entry in Path(directory).glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed
