"""Socket transports for served vTPMs: swtpm (data + control) and mssim (command + platform).

Each listener accepts any number of connections, each served by a thread;
commands reach the device one at a time. A client that sends garbage, lies
about sizes or vanishes mid-command loses its connection, never the server.
"""

from __future__ import annotations

import array
import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vtpm import wire
from vtpm.constants import RC
from vtpm.server import swtpm_ctrl
from vtpm.server.device import TpmDevice
from vtpm.server.endpoints import bind_unix
from vtpm.server.protocol import (
    MS_PROTOCOL_VERSION,
    MS_REMOTE_HANDSHAKE,
    MS_SEND_COMMAND,
    MS_SESSION_END,
    MS_SIGNAL_HASH_DATA,
    MS_SIGNAL_POWER_OFF,
    MS_SIGNAL_POWER_ON,
    MS_SIGNAL_RESET,
    MS_STOP,
    MS_TEST_FAILURE_MODE,
)

log = logging.getLogger(__name__)

MAX_WIRE_COMMAND = 64 * 1024  # refuse to buffer more than this for one command
DATA_RECV = 4096  # bytes asked of one recv on a data connection (a typical command fits)
MID_COMMAND_TIMEOUT = 10.0  # seconds a client may take to finish sending a started command
_SIZE_FIELD = struct.Struct(">I")  # commandSize, at offset 2 of the header


class ConnectionClosed(Exception):
    """The peer closed or stalled mid-request: the connection ends, the server goes on."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock``, however many reads it takes; ConnectionClosed if the peer closes
    first (OSError and socket timeouts propagate)."""
    parts, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionClosed()
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def serve_tpm_commands(sock: socket.socket, device: TpmDevice, *, once: bool = False) -> None:
    """swtpm data channel: raw TPM commands in, responses out, until the peer closes (after one with ``once``).

    The socket stays blocking with no timeout (a timeout costs two fcntl calls per
    command): a client that stalls mid-command only holds its own thread, and one
    that disconnects ends it. One recv usually brings a whole command (header and
    body): one syscall, not two, and the command goes to the device as it came.
    """
    recv, sendall, execute = sock.recv, sock.sendall, device.execute
    header_size, size_field = wire.HEADER_SIZE, _SIZE_FIELD.unpack_from
    with contextlib.closing(sock):
        sock.settimeout(None)
        buf = b""
        while True:
            try:
                while len(buf) < header_size:
                    chunk = recv(DATA_RECV)
                    if not chunk:
                        return
                    buf += chunk
                size = size_field(buf, 2)[0]
                if size < header_size or size > MAX_WIRE_COMMAND:
                    sendall(wire.error_response(RC.COMMAND_SIZE))
                    return  # the stream is out of step: drop the connection
                while len(buf) < size:
                    chunk = recv(max(DATA_RECV, size - len(buf)))
                    if not chunk:
                        return
                    buf += chunk
                if len(buf) == size:
                    command, buf = buf, b""
                else:
                    command, buf = buf[:size], buf[size:]
                sendall(execute(command))
                if once:
                    return
            except OSError:
                return


MAX_PASSED_FDS = 4  # descriptors taken from one control message; the kernel closes any beyond


def recv_with_fds(sock: socket.socket, n: int) -> tuple[bytes, list[int]]:
    """One read of at most ``n`` bytes and the descriptors passed with it (SCM_RIGHTS)."""
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(n, socket.CMSG_SPACE(MAX_PASSED_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


@dataclass
class SwtpmControlSession:
    """One control-channel connection: requests framed as swtpm frames them (see swtpm_ctrl)."""

    sock: socket.socket
    device: TpmDevice
    unix: bool
    on_data_fd: Callable[[socket.socket], None]
    on_terminate: Callable[[], None]

    def _read_request(self, fds: list[int]) -> bytes:
        """One request: what the first read delivers, completed up to its size (b"" when the peer closed);
        descriptors passed with its first read go to ``fds``."""
        self.sock.settimeout(None)
        if self.unix:
            message, passed = recv_with_fds(self.sock, swtpm_ctrl.CTRL_READ)
            fds += passed
        else:
            message = self.sock.recv(swtpm_ctrl.CTRL_READ)
        if not message:
            return b""
        reader = swtpm_ctrl.RequestReader()
        reader.feed(message)
        deadline = time.monotonic() + swtpm_ctrl.CTRL_REQUEST_TIMEOUT
        while (request := reader.next_request()) is None:
            timeout = swtpm_ctrl.CTRL_BLOB_TIMEOUT if reader.in_blob_data else deadline - time.monotonic()
            if timeout <= 0:
                raise ConnectionClosed()
            self.sock.settimeout(timeout)
            chunk = self.sock.recv(min(reader.missing, 64 * 1024))
            if not chunk:
                raise ConnectionClosed()
            reader.feed(chunk)
        return request

    def run(self) -> None:
        """Answer requests until the peer closes, stalls or errs, or a request ends the connection or the
        server (CMD_SHUTDOWN or a lost state lock calls ``on_terminate``); the socket and any passed descriptors are closed."""
        with contextlib.closing(self.sock):
            while True:
                fds: list[int] = []
                try:
                    message = self._read_request(fds)
                    if not message:
                        return
                    code = int.from_bytes(message[:4], "big")
                    result = swtpm_ctrl.handle(self.device, code, message[4:], unix=self.unix)
                    result = swtpm_ctrl.take_data_fd(result, fds, self.on_data_fd)
                    self.sock.settimeout(swtpm_ctrl.CTRL_BLOB_TIMEOUT)
                    self.sock.sendall(result.response)
                    if result.terminate:
                        self.on_terminate()
                        return
                    if result.close:
                        return
                except (ConnectionClosed, OSError):
                    return
                finally:
                    swtpm_ctrl.close_fds(fds)


@dataclass
class Listener:
    """A listening socket whose connections each get a thread running ``serve``."""

    sock: socket.socket
    serve: Callable[[socket.socket], None]
    name: str
    thread: threading.Thread | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Accept connections in a daemon thread until ``close``."""
        self.thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self.closed.is_set():
                    return
                continue
            threading.Thread(target=self.serve, args=(conn,), name=f"{self.name}-conn", daemon=True).start()

    def close(self) -> None:
        """Stop accepting and close the listening socket; connections already accepted run on."""
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def tcp_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv6 when ``host`` has a colon), with SO_REUSEADDR so a
    restart can rebind at once and TCP_NODELAY so small responses are not delayed; OSError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def unix_listener(path: str) -> socket.socket:
    """A listening Unix socket, 0600; see ``bind_unix`` for what may stand at ``path`` already."""
    return bind_unix(path, 16)


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port P such that P and P+1 are both free on ``host`` (for a data/control pair)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free port pair on {host}")


class _Server:
    """Listeners started and closed together."""

    listeners: list[Listener]

    def start(self) -> "_Server":
        for listener in self.listeners:
            listener.start()
        return self

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()


class SwtpmServer(_Server):
    """A vTPM on swtpm's protocol: TCP ports P (data) and P+1 (control), or Unix PATH and PATH.ctrl."""

    def __init__(self, device: TpmDevice, *, host: str = "127.0.0.1", port: int | None = None,
                 unix_path: str | None = None, ctrl_unix_path: str | None = None) -> None:
        self.device = device
        self.terminated = threading.Event()
        self.listeners: list[Listener] = []
        self.unix = unix_path is not None or ctrl_unix_path is not None
        if unix_path is not None:
            self.listeners.append(Listener(unix_listener(unix_path), self._serve_data, "data"))
        if ctrl_unix_path is not None or unix_path is not None:
            ctrl = ctrl_unix_path or f"{unix_path}.ctrl"
            self.listeners.append(Listener(unix_listener(ctrl), self._serve_ctrl, "ctrl"))
        if port is not None:
            self.listeners.append(Listener(tcp_listener(host, port), self._serve_data, "data"))
            self.listeners.append(Listener(tcp_listener(host, port + 1), self._serve_ctrl, "ctrl"))

    def _serve_data(self, conn: socket.socket) -> None:
        serve_tpm_commands(conn, self.device)

    def _serve_ctrl(self, conn: socket.socket) -> None:
        unix = conn.family == socket.AF_UNIX
        SwtpmControlSession(conn, self.device, unix, self._adopt_data_socket, self.terminated.set).run()

    def _adopt_data_socket(self, sock: socket.socket) -> None:
        threading.Thread(target=serve_tpm_commands, args=(sock, self.device), name="data-fd", daemon=True).start()


# ----------------------------------------------------------------------------- mssim



class MssimServer(_Server):
    """A vTPM on the Microsoft simulator protocol: command port P, platform port P+1."""

    def __init__(self, device: TpmDevice, *, host: str = "127.0.0.1", port: int) -> None:
        self.device = device
        self.terminated = threading.Event()
        self.powered = device.running
        self.listeners = [
            Listener(tcp_listener(host, port), self._serve_commands, "mssim-cmd"),
            Listener(tcp_listener(host, port + 1), self._serve_platform, "mssim-platform"),
        ]

    def _serve_commands(self, sock: socket.socket) -> None:
        with contextlib.closing(sock):
            while True:
                sock.settimeout(None)
                try:
                    code = int.from_bytes(recv_exact(sock, 4), "big")
                    sock.settimeout(MID_COMMAND_TIMEOUT)
                    if code == MS_SEND_COMMAND:
                        locality = recv_exact(sock, 1)[0]
                        size = int.from_bytes(recv_exact(sock, 4), "big")
                        if size > MAX_WIRE_COMMAND:
                            return
                        command = recv_exact(sock, size)
                        response = self.device.execute(command, locality) if self.powered else wire.error_response(RC.FAILURE)
                        sock.sendall(len(response).to_bytes(4, "big") + response + bytes(4))
                    elif code == MS_REMOTE_HANDSHAKE:
                        recv_exact(sock, 4)  # client version
                        flags = 1 | 2 | 4  # raw mode, platform available, physical presence
                        sock.sendall(MS_PROTOCOL_VERSION.to_bytes(4, "big") + flags.to_bytes(4, "big") + bytes(4))
                    elif code == MS_SESSION_END:
                        return
                    elif code == MS_STOP:
                        sock.sendall(bytes(4))
                        self.terminated.set()
                        return
                    else:
                        return  # unknown request: the stream cannot be trusted any more
                except (ConnectionClosed, OSError):
                    return

    def _serve_platform(self, sock: socket.socket) -> None:
        with contextlib.closing(sock):
            while True:
                sock.settimeout(None)
                try:
                    code = int.from_bytes(recv_exact(sock, 4), "big")
                    if code == MS_SESSION_END:
                        return
                    if code == MS_SIGNAL_POWER_ON:
                        if not self.powered:  # power-on of a running TPM changes nothing
                            self.device.init()
                            self.powered = True
                    elif code == MS_SIGNAL_POWER_OFF:
                        self.device.stop()
                        self.powered = False
                    elif code == MS_SIGNAL_RESET:
                        self.device.init()
                        self.powered = True
                    elif code == MS_SIGNAL_HASH_DATA:
                        size = int.from_bytes(recv_exact(sock, 4), "big")
                        recv_exact(sock, min(size, MAX_WIRE_COMMAND))
                    elif code == MS_STOP:
                        sock.sendall(bytes(4))
                        self.terminated.set()
                        return
                    elif code == MS_TEST_FAILURE_MODE:
                        pass
                    sock.sendall(bytes(4))
                except (ConnectionClosed, OSError):
                    return
