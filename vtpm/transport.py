"""How a TpmClient reaches a TPM: in-process, swtpm's sockets (TCP or Unix), or the mssim protocol.

A transport moves one command frame to the TPM and one response frame back
(``transact``); framing is ``vtpm.wire``'s. Socket transports keep one
connection open for their lifetime. ``SwtpmControl`` speaks swtpm's control
channel (CMD_INIT, CMD_SHUTDOWN, CMD_STOP, CMD_SET_LOCALITY, ...), and
``MssimTransport`` also drives the simulator's platform port (power, NV).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Protocol

from vtpm import wire
from vtpm.server import protocol
from vtpm.server.protocol import Ctrl

HOST = "127.0.0.1"


class TransportError(ConnectionError):
    """The TPM closed the connection, sent nothing in time, or sent a malformed frame."""


class Transport(Protocol):
    """Anything that carries TPM command frames to a TPM and its responses back."""

    def transact(self, command: bytes) -> bytes:
        """Send one command frame; the response frame as received."""
        ...

    def close(self) -> None:
        """Release the connection; later calls fail."""
        ...


class InProcessTransport:
    """A ``vtpm.engine.Tpm`` (or anything with ``execute(locality, command)``) in this process."""

    def __init__(self, tpm: Any, locality: int = 0) -> None:
        self.tpm = tpm
        self.locality = locality

    def transact(self, command: bytes) -> bytes:
        """Execute ``command`` at this transport's locality; the engine's response."""
        return self.tpm.execute(self.locality, command)

    def close(self) -> None:
        """Nothing to release: the engine stays usable."""


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    parts, left = [], n
    while left:
        try:
            chunk = sock.recv(left)
        except TimeoutError:
            raise TransportError(f"no {what} before the timeout") from None
        except OSError as exc:
            raise TransportError(f"connection error while reading the {what}: {exc}") from None
        if not chunk:
            raise TransportError(f"the connection closed before the {what}")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise TransportError(f"send failed: {exc}") from None


def _tcp(host: str, port: int, timeout: float | None) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TransportError(f"cannot connect to {host}:{port}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _unix(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot connect to {path}: {exc}") from None
    return sock


class SocketTransport:
    """swtpm's data channel on a connected stream socket: raw command frames in, response frames out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def tcp(cls, port: int, host: str = HOST, timeout: float | None = 10.0) -> "SocketTransport":
        """swtpm's TCP data port (``--server type=tcp``)."""
        return cls(_tcp(host, port, timeout))

    @classmethod
    def unix(cls, path: str, timeout: float | None = 10.0) -> "SocketTransport":
        """swtpm's Unix data socket (``--server type=unixio``)."""
        return cls(_unix(path, timeout))

    def transact(self, command: bytes) -> bytes:
        """Send one command frame; the response frame, read to the size its header gives."""
        _send(self.sock, command)
        header = _recv_exact(self.sock, wire.HEADER_SIZE, "response header")
        size = wire.parse_header(header)[1]
        if size < wire.HEADER_SIZE:
            raise TransportError(f"malformed response header {header.hex()}")
        return header + _recv_exact(self.sock, size - wire.HEADER_SIZE, "response body")

    def close(self) -> None:
        """Close the data connection (swtpm then waits for the next one)."""
        with contextlib.suppress(OSError):
            self.sock.close()


class SwtpmControl:
    """swtpm's control channel (TCP port P+1 or the Unix ``--ctrl`` socket), one connection per request.

    Every answer starts with a TPM 1.2-style UINT32 result (0 is success);
    ``request`` returns the whole answer, the named helpers only the result.
    """

    def __init__(self, *, port: int | None = None, host: str = HOST, path: str | None = None,
                 timeout: float = 5.0) -> None:
        if (port is None) == (path is None):
            raise ValueError("give the control channel's TCP port or its Unix path")
        self.port, self.host, self.path, self.timeout = port, host, path, timeout

    def request(self, code: int, payload: bytes = b"", answer_size: int = 4) -> bytes:
        """Send control command ``code`` with ``payload`` on a new connection; the first ``answer_size`` bytes of the answer."""
        if self.path is not None:
            sock = _unix(self.path, self.timeout)
        else:
            sock = _tcp(self.host, self.port, self.timeout)  # type: ignore[arg-type]
        with contextlib.closing(sock):
            _send(sock, code.to_bytes(4, "big") + payload)
            return _recv_exact(sock, answer_size, "control channel answer")

    def _result(self, code: int, payload: bytes = b"") -> int:
        return int.from_bytes(self.request(code, payload), "big")

    def init(self, delete_volatile: bool = False) -> int:
        """CMD_INIT: _TPM_Init (power cycle); the TPM then waits for Startup."""
        return self._result(Ctrl.INIT, int(delete_volatile).to_bytes(4, "big"))

    def shutdown(self) -> int:
        """CMD_SHUTDOWN: stop the TPM and end the swtpm process."""
        return self._result(Ctrl.SHUTDOWN)

    def stop(self) -> int:
        """CMD_STOP: stop the TPM; the process stays for a later CMD_INIT."""
        return self._result(Ctrl.STOP)

    def set_locality(self, locality: int) -> int:
        """CMD_SET_LOCALITY: the locality later commands arrive from."""
        return self._result(Ctrl.SET_LOCALITY, bytes([locality]))

    def capabilities(self) -> int:
        """CMD_GET_CAPABILITY: the bit mask of supported control commands."""
        answer = self.request(Ctrl.GET_CAPABILITY, answer_size=8)
        if answer[:4] != bytes(4):
            raise TransportError(f"CMD_GET_CAPABILITY failed with result {int.from_bytes(answer[:4], 'big')}")
        return int.from_bytes(answer[4:], "big")


class MssimTransport:
    """The Microsoft TPM simulator protocol: commands on TCP port P, platform signals on P+1."""

    def __init__(self, port: int, host: str = HOST, locality: int = 0, timeout: float | None = 10.0) -> None:
        self.host, self.port, self.locality, self.timeout = host, port, locality, timeout
        self.sock = _tcp(host, port, timeout)
        self._platform: socket.socket | None = None

    def transact(self, command: bytes) -> bytes:
        """Send one command in an MS_SEND_COMMAND frame; the response, after checking the trailing result."""
        _send(self.sock, protocol.MS_SEND_COMMAND.to_bytes(4, "big") + bytes([self.locality])
              + len(command).to_bytes(4, "big") + command)
        size = int.from_bytes(_recv_exact(self.sock, 4, "response size"), "big")
        response = _recv_exact(self.sock, size, "response")
        result = _recv_exact(self.sock, 4, "trailing result")
        if result != bytes(4):
            raise TransportError(f"the simulator answered the command with result {result.hex()}")
        return response

    def signal(self, code: int) -> None:
        """Send one platform request (MS_SIGNAL_*) and check its UINT32 acknowledgement."""
        if self._platform is None:
            self._platform = _tcp(self.host, self.port + 1, self.timeout)
        _send(self._platform, code.to_bytes(4, "big"))
        answer = _recv_exact(self._platform, 4, "platform acknowledgement")
        if answer != bytes(4):
            raise TransportError(f"platform request {code} answered {answer.hex()}")

    def power_on(self) -> None:
        """Power on and make NV available, as tpm2-tss does when it connects."""
        ms = protocol
        self.signal(ms.MS_SIGNAL_POWER_ON)
        self.signal(ms.MS_SIGNAL_NV_ON)

    def power_off(self) -> None:
        """Power the simulated TPM off (MS_SIGNAL_POWER_OFF)."""
        self.signal(protocol.MS_SIGNAL_POWER_OFF)

    def close(self) -> None:
        """End both sessions (MS_SESSION_END) and close the sockets."""
        end = protocol.MS_SESSION_END.to_bytes(4, "big")
        for sock in (self.sock, self._platform):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.sendall(end)
            with contextlib.suppress(OSError):
                sock.close()
        self._platform = None
