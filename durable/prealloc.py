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

Direct mode (``direct=True``, where the file system takes ``O_DIRECT``):
appends collect in a page-aligned buffer that holds the file's last partial
block, and ``sync`` writes the blocks from that block to the end in one
``pwrite`` on a descriptor opened ``O_DIRECT | O_DSYNC``: durable when it
returns, one system call instead of ``pwrite`` + ``fdatasync``, no page-cache
copy. The bytes before the append point in the first block are rewritten as
they are on disk (the buffer keeps them), the bytes after the end are the
zeros the file already holds. ``O_DSYNC`` makes the kernel complete the write
with the data on stable storage (a FUA write, or the write followed by a
cache flush where the disk has no FUA), and the blocks were allocated and
written beforehand, so no metadata is needed to read them back: as durable as
``fdatasync``. Like the buffered page write it replaces, it relies on a block
being written whole or not at all by the disk. Where ``O_DIRECT`` is refused
(``EINVAL``: ramfs, some FUSE and overlay file systems), at open or at the
first write, the file is written through the page cache and synced with
``fdatasync`` instead. It is not the default: for records of a few hundred
bytes it measured 2-5 % slower than the page cache and ``fdatasync`` on a
virtio disk without FUA, where both end in the same cache flush
(docs/persistence.md).
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

from durable.atomic import atomic_writer

ZERO_CHUNK = 1 << 16
BLOCK = 4096  # the alignment of direct writes: a page, a multiple of every logical block size in use
_DIRECT_FLAGS = os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_DIRECT", 0) | os.O_DSYNC


def _write_zeros(fd: int, offset: int, count: int) -> None:
    zeros = bytes(min(count, ZERO_CHUNK))
    while count > 0:
        n = os.pwrite(fd, zeros[:min(count, len(zeros))], offset)
        offset += n
        count -= n


def _open_direct(path: Path) -> int:
    """A descriptor of ``path`` for direct, synchronous writes; -1 when the file system refuses it."""
    if not getattr(os, "O_DIRECT", 0):
        return -1
    try:
        return os.open(path, _DIRECT_FLAGS)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return -1
        raise


def _blocks(offset: int) -> int:
    """``offset`` rounded up to a whole block."""
    return -(-offset // BLOCK) * BLOCK


class PreallocatedFile:
    """``head`` then records appended at ``end``; ``sync`` makes everything appended so far durable."""

    def __init__(self, path: Path, fd: int, end: int, size: int, chunk: int, *, direct: bool = False) -> None:
        self.path = path
        self._fd = fd
        self.end = end
        self.size = size
        self.chunk = chunk
        self._direct_fd = _open_direct(path) if direct else -1
        # Direct mode: _buffer holds the file from _buffer_start (block-aligned, the block holding the
        # last synced byte) to end, zeros after it; _written is the file's end on disk.
        self._buffer: mmap.mmap | None = None
        self._buffer_start = 0
        self._written = end
        if self._direct_fd >= 0:
            self._load_tail()

    @property
    def direct(self) -> bool:
        """Appends are written with O_DIRECT | O_DSYNC (False: page cache and fdatasync)."""
        return self._direct_fd >= 0

    @classmethod
    def create(cls, path: str | os.PathLike[str], head: bytes, *, size: int, chunk: int | None = None,
               mode: int = 0o600, direct: bool = False) -> "PreallocatedFile":
        """Atomically replace ``path`` with ``head`` and zeros up to ``size`` bytes (durable on return)."""
        target = Path(path)
        size = max(size, len(head))
        with atomic_writer(target, mode) as handle:
            handle.write(head)
            handle.flush()
            _write_zeros(handle.fileno(), len(head), size - len(head))
        return cls.open(target, end=len(head), chunk=chunk or size, direct=direct)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, end: int, chunk: int, direct: bool = False) -> "PreallocatedFile":
        """An existing file whose next append goes at ``end`` (bytes from there on must be zeros)."""
        target = Path(path)
        fd = os.open(target, os.O_RDWR | os.O_CLOEXEC)
        try:
            return cls(target, fd, end, os.fstat(fd).st_size, chunk, direct=direct)
        except BaseException:
            os.close(fd)
            raise

    def _load_tail(self, capacity: int = 2 * BLOCK) -> None:
        """Fill the buffer with the file's partial block before ``end`` (read back from the file)."""
        start = self.end - self.end % BLOCK
        self._buffer_start = start
        self._written = self.end
        if self._buffer is not None:
            self._buffer.close()  # a fresh one: zeros after the tail
            self._buffer = None
        self._reserve(capacity, keep=0)
        assert self._buffer is not None
        tail = os.pread(self._fd, self.end - start, start)
        if len(tail) != self.end - start:
            raise OSError(f"{self.path} is shorter than its recorded end {self.end}")
        self._buffer[:len(tail)] = tail

    def _reserve(self, need: int, *, keep: int) -> None:
        """A buffer of at least ``need`` bytes (zeros past the first ``keep``, which are kept)."""
        if self._buffer is not None and len(self._buffer) >= need:
            return
        grown = mmap.mmap(-1, _blocks(max(need, 2 * BLOCK)))  # anonymous: page-aligned and zero-filled
        if self._buffer is not None:
            grown[:keep] = self._buffer[:keep]
            self._buffer.close()
        self._buffer = grown

    def _grow(self, needed_end: int) -> None:
        grow = -(-(needed_end - self.size) // self.chunk) * self.chunk
        _write_zeros(self._fd, self.size, grow)
        os.fsync(self._fd)  # the new size and blocks, once: later appends overwrite them
        self.size += grow

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end (not yet durable: see ``sync``); grows the file first if needed."""
        new_end = self.end + len(data)
        if self._direct_fd >= 0:
            if _blocks(new_end) > self.size:
                self._grow(_blocks(new_end))
            self._reserve(new_end - self._buffer_start, keep=self.end - self._buffer_start)
            assert self._buffer is not None
            self._buffer[self.end - self._buffer_start:new_end - self._buffer_start] = data
            self.end = new_end
            return
        if new_end > self.size:
            self._grow(new_end)
        written = os.pwrite(self._fd, data, self.end)
        if written != len(data):
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        self.end = new_end

    def sync(self) -> None:
        """Everything appended so far is durable on return: direct mode writes the blocks from the
        last partial one to the end (O_DSYNC); otherwise ``fdatasync`` (data only: the blocks exist)."""
        if self._direct_fd < 0:
            os.fdatasync(self._fd)
            return
        if self.end == self._written:
            return
        assert self._buffer is not None
        start, end = self._buffer_start, self.end
        span = _blocks(end) - start
        refused = False
        with memoryview(self._buffer) as whole, whole[:span] as blocks:  # released even if an error keeps them
            try:
                written = os.pwrite(self._direct_fd, blocks, start)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                refused = True
        if refused:
            self._fall_back()  # taken at open but refused at the write: the page cache and fdatasync
            return
        if written != span:
            raise OSError(f"short write to {self.path}: {written} of {span} bytes")
        self._written = end
        tail = end - end % BLOCK  # the block holding the end starts the buffer from now on
        if tail > start:
            kept = end - tail
            buffer = self._buffer
            buffer[:kept] = buffer[tail - start:end - start]
            buffer[kept:end - start] = bytes(end - start - kept)
            self._buffer_start = tail

    def _fall_back(self) -> None:
        """Leave direct mode: write what the buffer holds past the disk's end through the page cache, sync."""
        assert self._buffer is not None
        pending = self._buffer[self._written - self._buffer_start:self.end - self._buffer_start]
        self._close_direct()
        if self.end > self.size:
            self._grow(self.end)
        if pending and os.pwrite(self._fd, pending, self._written) != len(pending):
            raise OSError(f"short write to {self.path}")
        os.fdatasync(self._fd)

    def erase_from(self, offset: int) -> None:
        """Zero what was appended after ``offset`` and sync (durable on return): the next append goes
        there. Undoes appends that were never acknowledged, so that reopening cannot find them."""
        if offset < self.end:
            _write_zeros(self._fd, offset, self.end - offset)
            os.fdatasync(self._fd)
        self.end = min(self.end, offset)
        if self._direct_fd >= 0:
            self._load_tail()  # read back: the buffer may hold bytes that never reached the disk

    def _close_direct(self) -> None:
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None

    def close(self) -> None:
        """Close the descriptors (nothing is synced); repeated calls do nothing."""
        self._close_direct()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "PreallocatedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
