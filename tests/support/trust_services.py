"""The Trust Authority's services (`vmcrypt trust serve`) for tests: a real process, ready when it says so.

``start_trust_services(home)`` runs ``python -m vmcrypt --home HOME trust serve`` on free loopback
ports and returns once the process has printed its ready line (both listeners up, mutual TLS);
a process that exits first or misses the deadline raises with its log. Leaving the ``with``
block stops it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from support.servers import stop_process

READY = re.compile(r"attestation (https://[\d.]+:\d+) key-provider (https://[\d.]+:\d+)")


@dataclass
class TrustServices:
    proc: subprocess.Popen[bytes]
    log_path: Path
    attestation_url: str
    key_provider_url: str

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        return stop_process(self.proc, 15.0)

    def __enter__(self) -> "TrustServices":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_trust_services(home: Path, timeout: float = 30.0) -> TrustServices:
    home = Path(home).absolute()
    log_path = home.parent / f"{home.name}.trust-services.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
    with open(log_path, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "vmcrypt", "--home", str(home), "trust", "serve"],
                                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        found = READY.search(log_path.read_text(errors="replace"))
        if found:
            return TrustServices(proc, log_path, found.group(1), found.group(2))
        if time.monotonic() >= deadline:
            stop_process(proc, 5.0)
            raise RuntimeError(f"the trust services did not start in {timeout:.0f} s:\n{log_path.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"the trust services exited with status {proc.returncode}:\n{log_path.read_text()}")
