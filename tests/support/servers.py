"""Run `vtpm serve` as a real subprocess for tests, on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vtpm.server.sockets import free_port_pair


@dataclass
class ServedTpm:
    process: subprocess.Popen[bytes]
    port: int
    protocol: str
    log: Path

    @property
    def tcti(self) -> str:
        return f"{self.protocol}:host=127.0.0.1,port={self.port}"

    def tools_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TPM2TOOLS_TCTI"] = self.tcti
        return env

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_vtpm(args: list[str], log: Path, protocol: str = "swtpm", port: int | None = None) -> ServedTpm:
    port = port or free_port_pair()
    handle = open(log, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "vtpm", "serve", "--port", str(port), "--protocol", protocol, *args],
        stdout=handle, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vtpm serve exited {process.returncode}: {log.read_text()}")
        if b"serving on" in log.read_bytes():
            return ServedTpm(process, port, protocol, log)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"vtpm serve did not start: {log.read_text()}")


@contextlib.contextmanager
def served(args: list[str], log: Path, protocol: str = "swtpm") -> Iterator[ServedTpm]:
    server = start_vtpm(args, log, protocol)
    try:
        yield server
    finally:
        server.stop()
