"""The management service (`vmcrypt server`) for tests: started on a home, ready when it answers.

``start_service(home)`` runs ``python -m vmcrypt --home HOME server`` (optionally
``--listen 127.0.0.1:0`` for HTTPS too) and returns once ``GET /health`` answers
on its Unix socket; a service that exits first, or does not answer by the
deadline, raises ServiceStartError with its log. Readiness is polled, never
waited for with a fixed sleep. Leaving the ``with`` block stops it (SIGTERM,
then SIGKILL).

``ServiceRunner`` starts one service per management home on first need (the
first ``--user`` command line for that home) and stops them all at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.servers import ChildProcess

READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.02


class ServiceStartError(RuntimeError):
    pass


@dataclass
class ManagementService(ChildProcess):
    """A running ``vmcrypt server`` on a management home."""

    home: Path
    socket_path: Path
    stop_timeout = 15.0

    @property
    def url(self) -> str:
        return f"unix:{self.socket_path}"

    def https_url(self) -> str | None:
        found = re.search(r"https://[\d.]+:\d+", self.log_text())
        return found.group(0) if found else None


def _answers(socket_path: Path) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://vmcrypt",
                          timeout=2.0) as client:
            return client.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


def start_service(home: Path, *, listen: str | None = None, log: Path | None = None,
                  env: dict[str, str] | None = None, timeout: float = READY_TIMEOUT,
                  socket_path: Path | None = None) -> ManagementService:
    """`vmcrypt --home HOME server` (as this process's user: root in the tests), ready to answer.
    ``socket_path``: its Unix socket (``--socket``; default HOME/run/vmcrypt.sock): two services of one home."""
    home = Path(home).absolute()
    log_path = log or home.parent / f"{home.name}.service.log"
    command = [sys.executable, "-m", "vmcrypt", "--home", str(home), "server"]
    if socket_path is not None:
        command += ["--socket", str(socket_path)]
    socket_path = Path(socket_path or home / "run" / "vmcrypt.sock")
    if listen:
        command += ["--listen", listen]
    base = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")} if env is None else env
    with open(log_path, "wb") as handle:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=base)
    service = ManagementService(name="vmcrypt server", proc=proc, log_path=log_path, home=home,
                                socket_path=socket_path)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if socket_path.exists() and _answers(socket_path) and (not listen or service.https_url()):
            return service
        if time.monotonic() >= deadline:
            service.stop()
            raise ServiceStartError(f"the management service did not answer within {timeout:.0f} s; its log:\n"
                                    f"{service.log_text()}")
        time.sleep(POLL_INTERVAL)
    raise ServiceStartError(f"the management service exited with status {proc.returncode}; its log:\n"
                            f"{service.log_text()}")


class ServiceRunner:
    """One management service per home, started when first needed, all stopped by ``stop_all``."""

    def __init__(self) -> None:
        self.services: dict[Path, ManagementService] = {}

    def ensure(self, home: Path) -> ManagementService:
        home = Path(home).absolute()
        service = self.services.get(home)
        if service is None or service.proc.poll() is not None:
            service = self.services[home] = start_service(home)
        return service

    def stop_all(self) -> None:
        for service in self.services.values():
            service.stop()
        self.services.clear()
