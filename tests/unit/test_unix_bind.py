"""Binding a Unix socket never deletes what a caller names: only a stale socket is replaced.

A server running as root that unlinks whatever stands at a socket path would delete any file a
caller names (``power_on(data_unix=...)``, ``vtpm socket --server type=unixio,path=...``).
Inputs tried: a regular file, a directory, a live socket, a stale socket, a path longer than
sockaddr_un allows.
"""

import os
import socket
import stat

import pytest

from vtpm.server.endpoints import bind_unix
from vtpm.server.sockets import unix_listener


def test_a_regular_file_or_directory_is_refused_and_kept(tmp_path) -> None:
    victim = tmp_path / "important.conf"
    victim.write_text("keep me")
    with pytest.raises(OSError, match="exists and is not a socket"):
        unix_listener(str(victim))
    assert victim.read_text() == "keep me"
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError, match="not a socket"):
        bind_unix(str(tmp_path / "dir"))
    assert (tmp_path / "dir").is_dir()


def test_a_live_socket_is_refused_and_a_stale_one_replaced(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    live = unix_listener(path)
    try:
        with pytest.raises(OSError, match="already listens"):
            unix_listener(path)
    finally:
        live.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # stale now: nobody accepts
    again = bind_unix(path, mode=0o660)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    finally:
        again.close()


def test_a_long_path_binds_through_its_directory(tmp_path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "vtpm.sock")
    assert len(path) > 108
    sock = unix_listener(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        sock.close()
