"""Our vTPM and swtpm as peers that run the same raw commands and tpm2-tools steps.

The servers come from ``support.servers.side_by_side``. A peer adds what the
command tests need on top: a ``TpmClient`` that resends a command answered
TPM_RC_RETRY (as TSS stacks do; libtpms answers the first DA-protected
authorization after Startup that way), and ``tool``, which runs ``tpm2 ...``
and then flushes the transient objects and loaded sessions the tool left
behind, as a resource manager would (contexts saved in files stay usable).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from support.servers import TpmServer, side_by_side
from vtpm import wire
from vtpm.client import TpmClient
from vtpm.constants import CAP, HT, RC
from vtpm.transport import HOST, SocketTransport


class RetryingTransport:
    """A socket transport that sends a command again while the TPM answers TPM_RC_RETRY (three tries)."""

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
    server: TpmServer
    _client: TpmClient | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def client(self) -> TpmClient:
        """One connection, opened on first use and closed while a tool runs."""
        if self._client is None:
            self._client = TpmClient(RetryingTransport(SocketTransport.tcp(self.port, HOST, timeout=60)))
        return self._client

    def transact(self, command: bytes) -> bytes:
        return self.client.transact(command)

    def flush_transients(self) -> None:
        """Flush the loaded objects and loaded sessions a tool left behind; sessions saved to files stay."""
        for kind in (HT.TRANSIENT, HT.HMAC_SESSION):
            _, data = self.client.get_capability(CAP.HANDLES, kind << 24, 64)
            for i in range(int.from_bytes(data[:4], "big")):
                self.transact(wire.flush_context(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big")))

    def tool(self, *args: str, cwd: Path, stdin: bytes | None = None, check: bool = True
             ) -> subprocess.CompletedProcess[bytes]:
        """Run ``tpm2 <args>`` against this peer, then flush what it left loaded."""
        self.close_client()  # one connection at a time: the tool's own
        result = subprocess.run(["tpm2", *args], env=self.server.tools_env(), cwd=cwd, input=stdin,
                                capture_output=True, timeout=120)
        self.flush_transients()
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name}: tpm2 {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr.decode(errors='replace')}")
        return result

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass
class Pair:
    """The same steps against both TPMs: ``ours`` and ``ref`` (swtpm)."""

    ours: Peer
    ref: Peer
    tmp: Path

    def both(self, command: bytes) -> tuple[bytes, bytes]:
        return self.ours.transact(command), self.ref.transact(command)

    def dirs(self) -> tuple[Path, Path]:
        """A working directory per peer for the files tools write (contexts, keys, digests)."""
        a, b = self.tmp / "work-ours", self.tmp / "work-ref"
        a.mkdir(exist_ok=True)
        b.mkdir(exist_ok=True)
        return a, b


@contextmanager
def peer_pair(tmp: Path) -> Iterator[Pair]:
    with side_by_side(tmp) as servers:
        pair = Pair(Peer(servers["vtpm"]), Peer(servers["swtpm"]), tmp)
        try:
            yield pair
        finally:
            pair.ours.close_client()
            pair.ref.close_client()


def tools_installed() -> bool:
    return shutil.which("tpm2") is not None
