"""A real PostgreSQL server for tests: ``initdb`` in a temporary directory, a free loopback port.

``start_postgres()`` makes a new cluster (superuser ``vmcrypt`` with a password,
SCRAM authentication, its Unix socket in the same temporary directory) and
starts ``postgres`` on 127.0.0.1; ``create_database()`` gives each test an
empty database and its URL. PostgreSQL refuses to run as root, so under root the
cluster belongs to the ``postgres`` system user (made by Debian's package), or
``nobody`` when there is none. ``stop()`` shuts it down (fast shutdown) and
removes the directory. Without the binaries (Debian ``postgresql``, listed in
scripts/bootstrap.sh) ``require_postgres`` skips, naming the package.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

READY_TIMEOUT = 60.0
SUPERUSER = "vmcrypt"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


def require_postgres() -> Path:
    found = postgres_bin()
    if found is None:
        pytest.skip("PostgreSQL is not installed (Debian package 'postgresql', see scripts/bootstrap.sh)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_as() -> str | None:
    """The system user the server runs as (None: this process's own user, when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("PostgreSQL cannot run as root and there is no 'postgres' or 'nobody' user")


@dataclass
class PostgresServer:
    directory: Path
    port: int
    password: str
    proc: subprocess.Popen[bytes]
    databases: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql+psycopg://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
                               dbname=database, autocommit=True)

    def create_database(self, prefix: str = "inventory") -> str:
        """A new empty database; its name."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return name

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: ends the sessions still open
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + postgres on a free loopback port, ready to accept connections."""
    bindir = require_postgres()
    user = _run_as()
    directory = Path(tempfile.mkdtemp(prefix="vmcrypt-pg-"))  # under /tmp: reachable by the server's user
    password = secrets.token_urlsafe(16)
    pwfile = directory / "pwfile"
    pwfile.write_text(password + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    data = directory / "data"
    try:
        subprocess.run([bindir / "initdb", "-D", data, "-U", SUPERUSER, "--pwfile", pwfile, "-A", "scram-sha-256",
                        "-E", "UTF8", "--no-sync", "--no-instructions"], check=True, user=user, cwd=directory,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from None
    pwfile.unlink()
    port = _free_port()
    with open(directory / "postgres.log", "wb") as log:
        if user is not None:
            os.chown(directory / "postgres.log", pwd.getpwnam(user).pw_uid, -1)
        proc = subprocess.Popen(
            [bindir / "postgres", "-D", data, "-p", str(port), "-k", directory, "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=60", "-c", "shared_buffers=32MB"],
            user=user, cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = PostgresServer(directory, port, password, proc)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            text = server.log_text()
            server.stop()
            raise RuntimeError(f"postgres exited with status {proc.returncode}:\n{text}")
        try:
            with server.connect():
                return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                text = server.log_text()
                server.stop()
                raise RuntimeError(f"postgres did not accept connections within {READY_TIMEOUT:.0f} s:\n{text}")
            time.sleep(0.1)
