"""Where a served vTPM listens, and Unix socket paths of any length; no engine is loaded here."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
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
        """The endpoints in words, for logs and status output ("" when there are none)."""
        parts = []
        if self.tcp_port is not None:
            parts.append(f"swtpm tcp {self.tcp_host}:{self.tcp_port} (ctrl {self.tcp_port + 1})")
        if self.data_unix is not None:
            parts.append(f"swtpm unix {self.data_unix} (ctrl {self.ctrl_unix})")
        elif self.ctrl_unix is not None:
            parts.append(f"swtpm unix ctrl {self.ctrl_unix}")
        return " and ".join(parts)


def unix_socket_in_use(path: str) -> bool:
    """Something accepts connections on ``path`` now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, reachable(path) as where:
        probe.settimeout(1.0)
        try:
            probe.connect(where)
        except OSError:
            return False
    return True


def bind_unix(path: str, backlog: int = 64, mode: int = 0o600) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode`` (never more open than 0600 between bind and
    chmod). A stale socket file is replaced; a live socket or any other kind of file there is refused,
    never removed: a server running as root must not delete whatever a caller names."""
    try:
        existing = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing):
            raise OSError(f"{path}: exists and is not a socket")
        if unix_socket_in_use(path):
            raise OSError(f"{path}: a server already listens there")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            with reachable(path) as where:
                sock.bind(where)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
