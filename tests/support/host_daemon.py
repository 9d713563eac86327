"""Host daemons (`vmcrypt host run NAME`) for tests: started on a management home, ready when they say so.

``start_host(home, name, *args)`` runs ``python -m vmcrypt --home HOME host run NAME ARGS`` with its
output in a log file and returns once the ready line ("... serving on ...") is there; a daemon that
exits first, or is not ready by the deadline, raises HostStartError with its log. Readiness is
polled, never waited for with a fixed sleep. Leaving the ``with`` block stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from support.servers import ChildProcess

READY_TIMEOUT = 60.0  # a boot measures 15 signed VIBs and manufactures the TPM on first boot
POLL_INTERVAL = 0.02


class HostStartError(RuntimeError):
    pass


@dataclass
class HostProcess(ChildProcess):
    """A running host daemon; ``name`` is the host's name."""

    home: Path
    stop_timeout = 15.0

    @property
    def socket_path(self) -> Path:
        return self.home / "hosts" / self.name / "run" / "host.sock"


def host_command(home: Path, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "vmcrypt", "--home", str(home), "host", "run", name, *args]


def start_host(home: Path, name: str, *args: str, timeout: float = READY_TIMEOUT) -> HostProcess:
    """`vmcrypt --home HOME host run NAME ARGS`, booted and answering."""
    home = Path(home).absolute()
    log_path = home.parent / f"{name}.host.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
    with open(log_path, "wb") as handle:
        proc = subprocess.Popen(host_command(home, name, *args), stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT, env=env)
    host = HostProcess(name=name, proc=proc, log_path=log_path, home=home)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if "serving on" in host.log_text():
            return host
        if time.monotonic() >= deadline:
            host.stop()
            raise HostStartError(f"host {name} was not ready within {timeout:.0f} s; its log:\n{host.log_text()}")
        time.sleep(POLL_INTERVAL)
    raise HostStartError(f"host {name} exited with status {proc.returncode}; its log:\n{host.log_text()}")
