"""Shared fixtures: isolated management homes, VMs and a CLI runner that uses real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.differential import Differential, verified
from support.servers import require_swtpm, start_swtpm, start_vtpm
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
    """Run the real `vmcrypt` entry point in a subprocess against the test's management home."""

    def run(*args: str, env: dict[str, str] | None = None, check: bool = False) -> CliResult:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "vmcrypt", "--home", str(home), *args],
            capture_output=True, text=True, env=full_env, timeout=120,
        )
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"vmcrypt {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return result

    return run


@pytest.fixture
def tpms(tmp_path: Path):
    """A fresh swtpm and a fresh vTPM, both after Startup(CLEAR), stopped (SIGTERM, then SIGKILL) afterwards.

    A difference a test recorded and did not report with ``assert_identical()`` fails it at teardown.
    """
    require_swtpm()
    with (start_swtpm(tmp_path / "swtpm-state") as ref,
          start_vtpm(["--state", str(tmp_path / "vtpm-state"), "--startup-clear"], tmp_path / "vtpm.log") as ours):
        yield from verified(Differential(ours, ref))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test that left differences unreported fails itself, instead of passing and erring at teardown."""
    result = yield
    diff = getattr(item, "funcargs", {}).get("tpms")
    if isinstance(diff, Differential):
        diff.assert_all_reported()
    return result
