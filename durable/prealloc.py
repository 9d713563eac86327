"""An append-only file whose blocks are allocated and zero-filled ahead of the writes.

Appending to a file changes its size, so ``fdatasync`` must also commit the
inode (on ext4 a metadata journal commit); ``fallocate`` leaves unwritten
extents whose first write is a metadata change too. Overwriting blocks that
were written with zeros and synced beforehand changes data only, so the
``fdatasync`` that makes an append durable flushes just the data
(benchmarks/journal_latency.py measures the three on this disk). The file is
created atomically (temp, fsync, rename, fsync directory) with its first
bytes and zeros up to its size; it grows by whole zero-filled chunks, each
synced with a full ``fsync`` when it is added.
"""

from __future__ import annotations

import os
from pathlib import Path

from durable.atomic import atomic_writer

ZERO_CHUNK = 1 << 16


def _write_zeros(fd: int, offset: int, count: int) -> None:
    zeros = bytes(min(count, ZERO_CHUNK))
    while count > 0:
        n = os.pwrite(fd, zeros[:min(count, len(zeros))], offset)
        offset += n
        count -= n


class PreallocatedFile:
    """``head`` then records appended at ``end``; ``sync`` makes everything appended so far durable."""

    def __init__(self, path: Path, fd: int, end: int, size: int, chunk: int) -> None:
        self.path = path
        self._fd = fd
        self.end = end
        self.size = size
        self.chunk = chunk

    @classmethod
    def create(cls, path: str | os.PathLike[str], head: bytes, *, size: int, chunk: int | None = None,
               mode: int = 0o600) -> "PreallocatedFile":
        """Atomically replace ``path`` with ``head`` and zeros up to ``size`` bytes (durable on return)."""
        target = Path(path)
        size = max(size, len(head))
        with atomic_writer(target, mode) as handle:
            handle.write(head)
            handle.flush()
            _write_zeros(handle.fileno(), len(head), size - len(head))
        return cls.open(target, end=len(head), chunk=chunk or size)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, end: int, chunk: int) -> "PreallocatedFile":
        """An existing file whose next append goes at ``end`` (bytes from there on must be zeros)."""
        target = Path(path)
        fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        return cls(target, fd, end, os.fstat(fd).st_size, chunk)

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end (not yet durable: see ``sync``); grows the file first if needed."""
        if self.end + len(data) > self.size:
            grow = -(-(self.end + len(data) - self.size) // self.chunk) * self.chunk
            _write_zeros(self._fd, self.size, grow)
            os.fsync(self._fd)  # the new size and blocks, once: later appends overwrite them
            self.size += grow
        written = os.pwrite(self._fd, data, self.end)
        if written != len(data):
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        self.end += len(data)

    def sync(self) -> None:
        """``fdatasync``: everything appended so far is durable on return (data only: the blocks exist)."""
        os.fdatasync(self._fd)

    def erase_from(self, offset: int) -> None:
        """Zero what was appended after ``offset`` and sync (durable on return): the next append goes
        there. Undoes appends that were never acknowledged, so that reopening cannot find them."""
        if offset < self.end:
            _write_zeros(self._fd, offset, self.end - offset)
            os.fdatasync(self._fd)
        self.end = min(self.end, offset)

    def close(self) -> None:
        """Close the descriptor (nothing is synced); repeated calls do nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "PreallocatedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
