"""The overall progress bar: one bar with bytes over all files on a terminal, none on a pipe or a
0-column pty."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
from pathlib import Path

from vmcrypt.progress import FileProgress
from vmcrypt.vm import FileKind, VmFile


def _pty(columns: int):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, os.fdopen(slave, "w")


def _drive(bar: FileProgress) -> None:
    files = [VmFile(Path("/vm/a.nvram"), FileKind.NVRAM), VmFile(Path("/vm/b-flat.vmdk"), FileKind.DISK)]
    bar.plan({files[0]: 1000, files[1]: 3000})
    for f, total in ((files[0], 1000), (files[1], 3000)):
        for done in range(0, total + 1, 500):
            bar(f, done, total)
    bar.close()


def test_zero_column_pty_gets_no_bar() -> None:
    master, stream = _pty(0)
    try:
        bar = FileProgress(stream)
        assert not bar.enabled
        _drive(bar)
        stream.flush()
        os.set_blocking(master, False)
        try:
            assert os.read(master, 4096) == b""
        except BlockingIOError:
            pass
    finally:
        stream.close()
        os.close(master)


def _read_until(master: int, marker: str, timeout: float = 5.0) -> str:
    """What the pty carried, read until ``marker`` arrives or nothing more comes for ``timeout``
    (the terminal side hands written bytes over asynchronously: on a busy machine one read may
    see only part of them)."""
    out = ""
    while marker not in out:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            break
        out += os.read(master, 65536).decode(errors="replace")
    return out


def test_terminal_gets_one_overall_bar() -> None:
    master, stream = _pty(100)
    try:
        bar = FileProgress(stream)
        assert bar.enabled
        _drive(bar)
        stream.flush()
        out = _read_until(master, "100%")
        assert "3.91k/3.91k" in out  # one bar, its total covering both files (4000 B)
        assert "vmcrypt" in out and "100%" in out
    finally:
        stream.close()
        os.close(master)
