"""Shared fixtures: isolated management homes, key managers and a CLI runner that uses real processes.

The tests run in three lanes, one directory each; `pytest` (scripts/test.sh)
runs all of them, `pytest tests/unit` the quick one alone:

- unit/: in-process only, no process is started (unit/conftest.py refuses it);
  servers on loopback threads inside the test process are fine;
- interop/: against other implementations and clients: swtpm, tpm2-tools,
  tpm2-pytss, pykmip-server, the differential tests;
- e2e/: the command lines in real processes, crashes (SIGKILL), the demo, the
  management plane from start to end.

Helpers shared by the lanes and the benchmarks are in support/ (imported as
`support`). Tests marked `slow` take more than about 5 s each; `-m "not slow"`
leaves them out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.service import ServiceRunner
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "mgmt-home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def keys(home: Path) -> KeyManager:
    return KeyManager(ProviderRegistry(home))


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def vmcrypt_cli(home: Path):
    """Run the real `vmcrypt` entry point in a subprocess against the test's management home.

    A command with ``--user`` talks to the management service of its home (the last ``--home``
    given, else the test's home): the service is started there on first need and stopped when
    the test ends."""
    services = ServiceRunner()

    def run(*args: str, env: dict[str, str] | None = None, check: bool = False) -> CliResult:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
        full_env.update(env or {})
        if "--user" in args:
            homes = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--home"]
            services.ensure(Path(homes[-1]) if homes else home)
        proc = subprocess.run(
            [sys.executable, "-m", "vmcrypt", "--home", str(home), *args],
            capture_output=True, text=True, env=full_env, timeout=120,
        )
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"vmcrypt {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return result

    yield run
    services.stop_all()


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server for the whole run (support.postgres), stopped and removed at the end."""
    from support.postgres import start_postgres
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres) -> str:
    """The URL (password included) of a new empty PostgreSQL database for this test."""
    return postgres.url(postgres.create_database())


@pytest.fixture
def db_url(request) -> str | None:
    """The inventory's database for a test: None (SQLite in the home) unless the test is parametrized
    indirectly with "postgresql" (then a new database on the session's PostgreSQL server)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    return request.getfixturevalue("pg_url")
