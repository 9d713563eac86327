"""Our vTPM and swtpm side by side, for the tests of the commands libtpms has and we gained
(tests/test_vtpm_commands_ext.py, tests/test_vtpm_tools_ext.py).

Each peer is a real server process on a free loopback port pair: swtpm with its TCP data and
control channels, and `python -m vtpm serve` on the swtpm protocol, both already past
Startup(CLEAR). A peer gives a TpmClient for raw commands and runs tpm2-tools against itself;
tpm2-tools run without a resource manager here, so after each tool the transient objects it
left loaded are flushed (contexts saved in files stay usable), as tabrmd would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vtpm import wire
from vtpm.client import TpmClient
from vtpm.constants import CAP, HT, RC
from vtpm.server.sockets import free_port_pair
from vtpm.transport import SocketTransport

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class RetryingTransport:
    def __init__(self, inner: SocketTransport) -> None:
        self.inner = inner

    def transact(self, command: bytes) -> bytes:
        for _ in range(3):
            response = self.inner.transact(command)
            if wire.response_code(response) != RC.RETRY:
                break
        return response

    def close(self) -> None:
        self.inner.close()


@dataclass
class Peer:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    _client: TpmClient | None = field(default=None, repr=False)

    @property
    def client(self) -> TpmClient:
        """A client whose commands answered TPM_RC_RETRY ("not executed, send it again", as libtpms
        answers the first DA-protected authorization after Startup) are resent, as TSS stacks do."""
        if self._client is None:
            self._client = TpmClient(RetryingTransport(SocketTransport.tcp(self.port, HOST, timeout=60)))
        return self._client

    def transact(self, command: bytes) -> bytes:
        return self.client.transact(command)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TPM2TOOLS_TCTI"] = f"swtpm:host={HOST},port={self.port}"
        return env

    def flush_transients(self) -> None:
        """Flush the loaded objects and loaded sessions (TPM_HT_LOADED_SESSION) a tool left behind;
        sessions saved to files stay."""
        for kind in (HT.TRANSIENT, HT.HMAC_SESSION):
            _, data = self.client.get_capability(CAP.HANDLES, kind << 24, 64)
            for i in range(int.from_bytes(data[:4], "big")):
                handle = int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big")
                self.transact(wire.flush_context(handle))

    def tool(self, *args: str, cwd: Path, stdin: bytes | None = None, check: bool = True
             ) -> subprocess.CompletedProcess[bytes]:
        """Run ``tpm2 <args>`` against this peer; flush what it left loaded."""
        self.close_client()  # one connection at a time: the tool's own
        result = subprocess.run(["tpm2", *args], env=self.env, cwd=cwd, input=stdin, capture_output=True,
                                timeout=120)
        self.flush_transients()
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name}: tpm2 {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr.decode(errors='replace')}")
        return result

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stop(self) -> None:
        self.close_client()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _launch(name: str, argv, state: Path, ready, env: dict[str, str] | None = None) -> Peer:
    state.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = free_port_pair()
        log = state.parent / f"{state.name}.{attempt}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv(port), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(REPO_ROOT))
        peer = Peer(name, proc, port, log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if ready(peer):
                return peer
            time.sleep(0.05)
        peer.stop()
    raise RuntimeError(f"{name} did not start; last log:\n{log.read_text(errors='replace')}")


def start_swtpm(state: Path) -> Peer:
    binary = shutil.which("swtpm")
    if binary is None:
        pytest.fail("swtpm is not installed: these tests compare with it", pytrace=False)

    def argv(port: int) -> list[str]:
        return [binary, "socket", "--tpm2", "--server", f"type=tcp,port={port},bindaddr={HOST}",
                "--ctrl", f"type=tcp,port={port + 1},bindaddr={HOST}", "--tpmstate", f"dir={state}",
                "--flags", "not-need-init,startup-clear"]

    return _launch("swtpm", argv, state, lambda p: _accepts(p.port + 1))


def start_ours(state: Path) -> Peer:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "vtpm", "serve", "--state", str(state), "--port", str(port), "--host", HOST,
                "--protocol", "swtpm", "--startup-clear"]

    return _launch("vtpm", argv, state, lambda p: b"serving on" in p.log.read_bytes(), env)


@dataclass
class Pair:
    """The same steps against both TPMs: ``ours`` and ``ref`` (swtpm)."""

    ours: Peer
    ref: Peer
    tmp: Path

    def both(self, command: bytes) -> tuple[bytes, bytes]:
        return self.ours.transact(command), self.ref.transact(command)

    def dirs(self) -> tuple[Path, Path]:
        a, b = self.tmp / "work-ours", self.tmp / "work-ref"
        a.mkdir(exist_ok=True)
        b.mkdir(exist_ok=True)
        return a, b


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    ours = start_ours(tmp_path / "state-ours")
    try:
        ref = start_swtpm(tmp_path / "state-ref")
    except BaseException:
        ours.stop()
        raise
    try:
        yield Pair(ours, ref, tmp_path)
    finally:
        ours.stop()
        ref.stop()


def tools_installed() -> bool:
    return shutil.which("tpm2") is not None
