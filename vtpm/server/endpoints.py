"""Where a served vTPM listens, and Unix socket paths of any length; no engine is loaded here."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@contextlib.contextmanager
def reachable(path: str) -> Iterator[str]:
    """``path``, or for one longer than a Unix socket address allows (107 bytes) the same file
    through its directory's descriptor (/proc/self/fd/N/NAME), which the kernel resolves."""
    if len(os.fsencode(path)) < 108:
        yield path
        return
    directory, name = os.path.split(os.path.abspath(path))
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


@dataclass
class Endpoints:
    """Where one vTPM listens: Unix control (+ optional Unix data) and/or a TCP pair P (data), P+1 (control)."""

    ctrl_unix: str | None = None
    data_unix: str | None = None
    tcp_port: int | None = None
    tcp_host: str = "127.0.0.1"

    def describe(self) -> str:
        parts = []
        if self.tcp_port is not None:
            parts.append(f"swtpm tcp {self.tcp_host}:{self.tcp_port} (ctrl {self.tcp_port + 1})")
        if self.data_unix is not None:
            parts.append(f"swtpm unix {self.data_unix} (ctrl {self.ctrl_unix})")
        elif self.ctrl_unix is not None:
            parts.append(f"swtpm unix ctrl {self.ctrl_unix}")
        return " and ".join(parts)
