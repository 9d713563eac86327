"""A running host's endpoint (`vmcrypt host run`) tried by a local attacker: another user, a client
that drips its request to hold the host (it serves one connection at a time), and links planted in
its run directory before it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.host_daemon import host_command, start_host
from vmcrypt.trust.host_daemon import CONNECTION_TIMEOUT

pytestmark = pytest.mark.slow  # host boots and a dripping client held for the daemon's full deadline
NOBODY = 65534
NAME = "esx-local"
# Runs as `nobody` with the system's Python (the test's interpreter lives under root's 0700 home).
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print("connect:" + type(exc).__name__); sys.exit(0)
try:
    s.sendall(b'{"op": "ping"}\\n')
    print("answer:" + s.recv(65536).decode().strip())
except OSError as exc:
    print("closed:" + type(exc).__name__)
"""


@pytest.fixture
def open_home() -> Iterator[Path]:
    """A management home whose ancestors `nobody` may traverse (pytest's own tmp tree is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="vmcrypt-hostile-", dir="/tmp"))
    os.chmod(top, 0o711)
    home = top / "home"
    home.mkdir(mode=0o711)
    yield home
    shutil.rmtree(top)


def _as_nobody(socket_path: Path) -> str:
    done = subprocess.run(["/usr/bin/python3", "-c", PROBE, str(socket_path)], capture_output=True, text=True,
                          timeout=60, preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)), cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _ping(path: Path) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        sock.sendall(b'{"op": "ping"}\n')
        return json.loads(sock.makefile("rb").readline())


def test_another_local_user_gets_nothing_from_the_host(open_home: Path) -> None:
    with start_host(open_home, NAME) as host:
        assert _as_nobody(host.socket_path) == "connect:PermissionError"  # 0600 socket in 0700 directories
        # even with every mode loosened, the daemon answers no other user (SO_PEERCRED)
        run = host.socket_path.parent
        for directory in (open_home / "hosts", run.parent, run):
            os.chmod(directory, 0o711)
        os.chmod(host.socket_path, 0o666)
        refused = _as_nobody(host.socket_path)
        assert refused == "answer:" or refused.startswith("closed:"), refused  # closed without a word
        assert _ping(host.socket_path)["ok"] is True  # its own user still gets answers


def test_a_client_dripping_its_request_does_not_hold_the_host(open_home: Path) -> None:
    with start_host(open_home, NAME) as host:
        stop = threading.Event()
        dropped: list[float] = []

        def drip() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(host.socket_path))
                started = time.monotonic()
                try:
                    while not stop.is_set():
                        sock.sendall(b" ")  # a byte every half second: each read succeeds, the line never ends
                        time.sleep(0.5)
                    sock.settimeout(5)
                    if sock.recv(1) == b"":  # the daemon closed it
                        dropped.append(time.monotonic() - started)
                except OSError:
                    dropped.append(time.monotonic() - started)
        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            time.sleep(1.0)
            started = time.monotonic()
            assert _ping(host.socket_path)["ok"] is True
            waited = time.monotonic() - started
        finally:
            stop.set()
            dripper.join(30)
        assert waited < CONNECTION_TIMEOUT + 5, waited  # served once the dripper's deadline passed
        assert dropped and dropped[0] < CONNECTION_TIMEOUT + 5  # the dripper was cut off


def test_links_planted_in_the_run_directory_are_not_followed(open_home: Path, tmp_path: Path) -> None:
    run = open_home / "hosts" / NAME / "run"
    run.mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, run / "host.pid")
    os.symlink(victim, run / "host.sock")
    with start_host(open_home, NAME) as host:
        assert victim.read_text() == "precious\n"
        assert stat.S_ISREG((run / "host.pid").lstat().st_mode)
        assert stat.S_IMODE((run / "host.pid").stat().st_mode) == 0o600
        assert stat.S_ISSOCK(host.socket_path.lstat().st_mode)
        assert _ping(host.socket_path)["ok"] is True
    assert victim.read_text() == "precious\n"

    os.symlink(victim, run / "host.lock.planted")
    (run / "host.lock").unlink(missing_ok=True)
    os.rename(run / "host.lock.planted", run / "host.lock")
    locked = subprocess.run(host_command(open_home, NAME), capture_output=True, text=True, timeout=120)
    assert locked.returncode == 1 and "cannot open the host's lock file" in locked.stderr
    assert victim.read_text() == "precious\n"

    shutil.rmtree(run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    os.symlink(elsewhere, run)
    linked = subprocess.run(host_command(open_home, NAME), capture_output=True, text=True, timeout=120)
    assert linked.returncode == 1 and "is not a directory" in linked.stderr
    assert list(elsewhere.iterdir()) == [] and stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
