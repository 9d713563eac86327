"""Small timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import mmap
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

BLOCK = 4096


def median_ms(action: Callable[[], object], number: int) -> float:
    """The median wall time of ``number`` calls of ``action``, in milliseconds."""
    times = []
    for _ in range(number):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


class FdatasyncReference:
    """One durable 4 KiB write per call: the reference a durable NV_Write is measured against.

    ``mode``: "overwrite" (the reference: a pwrite into a preallocated, zero-filled, synced file,
    then os.fdatasync), "direct" (one pwrite on an ``O_DIRECT | O_DSYNC`` descriptor), "append"
    (write at the end, then fdatasync) or "fallocate" (overwrite of fallocate'd blocks, then
    fdatasync). ``close`` closes the file and removes it.
    """

    def __init__(self, directory: Path, name: str = "reference.bin", mode: str = "overwrite") -> None:
        self.path = directory / name
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.mode = mode
        if mode in ("overwrite", "direct"):
            os.write(self.fd, bytes(256 * BLOCK))
        elif mode == "fallocate":
            os.posix_fallocate(self.fd, 0, 1 << 24)
        os.fsync(self.fd)  # allocated and its size recorded: an overwrite then changes data only
        self.i = 0
        self.data: bytes | mmap.mmap = os.urandom(BLOCK)
        if mode == "direct":  # an aligned buffer (anonymous mmap) on an O_DIRECT | O_DSYNC descriptor
            os.close(self.fd)
            self.fd = os.open(self.path, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
            self.data = mmap.mmap(-1, BLOCK)
            self.data[:] = os.urandom(BLOCK)

    def __call__(self) -> None:
        if self.mode == "direct":
            os.pwrite(self.fd, self.data, (self.i % 256) * BLOCK)
            self.i += 1
            return
        if self.mode == "append":
            os.write(self.fd, self.data)
        elif self.mode == "fallocate":
            os.pwrite(self.fd, self.data, (self.i % 4096) * BLOCK)
        else:
            os.pwrite(self.fd, self.data, (self.i % 256) * BLOCK)
        os.fdatasync(self.fd)
        self.i += 1

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink()
