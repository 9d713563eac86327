"""The server behind `vtpm socket`: swtpm's data and control channels on the endpoints swtpm's options name.

Either channel may be a TCP port, a Unix socket path, an inherited listening
socket (``fd=``) or, for the control channel, an inherited connection
(``clientfd=``). Without ``--server`` the data channel arrives over the
control channel (CMD_SET_DATAFD), which is how QEMU and libvirt use swtpm.

``terminate`` is set when the process should end: CMD_SHUTDOWN, a lost state
lock, with ``terminate_on_data_close`` (``--terminate``) when a data connection
closes, and with ``terminate_on_ctrl_close`` (``--ctrl ...,terminate``) when the
control connection closes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from dataclasses import dataclass, field

from vtpm.server.device import TpmDevice
from vtpm.server.endpoints import bind_unix
from vtpm.server.sockets import Listener, SwtpmControlSession, serve_tpm_commands, tcp_listener
from vtpm.server.swtpm_options import Endpoint, FdEndpoint, TcpEndpoint, UnixEndpoint


def listen(endpoint: Endpoint) -> socket.socket:
    """A listening socket for ``endpoint`` (an inherited ``fd=`` socket is taken over as it is)."""
    if isinstance(endpoint, TcpEndpoint):
        return tcp_listener(endpoint.bindaddr, endpoint.port)
    if isinstance(endpoint, UnixEndpoint):
        sock = bind_unix(endpoint.path, 16, mode=endpoint.mode)
        if endpoint.uid is not None or endpoint.gid is not None:
            os.chown(endpoint.path, -1 if endpoint.uid is None else endpoint.uid,
                     -1 if endpoint.gid is None else endpoint.gid)
        return sock
    sock = socket.socket(fileno=endpoint.fd)
    if sock.type != socket.SOCK_STREAM:
        raise OSError(f"fd {endpoint.fd} is not a stream socket")
    return sock


@dataclass
class SocketServer:
    """One TpmDevice served on swtpm's socket protocol: a data endpoint and a control endpoint (TCP or Unix).

    The caller chooses the endpoints (a port, a Unix path or an inherited fd);
    ``bind`` opens them, the serving threads answer until ``terminate`` is set.
    """

    device: TpmDevice
    ctrl: Endpoint | None
    data: Endpoint | None
    terminate_on_data_close: bool = False
    terminate_on_ctrl_close: bool = False
    disconnect: bool = False  # --server ...,disconnect: one command per data connection
    terminate: threading.Event = field(default_factory=threading.Event)
    listeners: list[Listener] = field(default_factory=list)
    _ctrl_client: socket.socket | None = None
    _unlink: list[str] = field(default_factory=list)

    def bind(self) -> "SocketServer":
        """Create the listening sockets (before any thread starts: safe to fork after this)."""
        for endpoint, serve, name in ((self.data, self._serve_data, "data"), (self.ctrl, self._serve_ctrl, "ctrl")):
            if endpoint is None:
                continue
            if isinstance(endpoint, FdEndpoint) and endpoint.connected:
                self._ctrl_client = socket.socket(fileno=endpoint.fd)
                continue
            self.listeners.append(Listener(listen(endpoint), serve, name))
            if isinstance(endpoint, UnixEndpoint):
                self._unlink.append(endpoint.path)
        return self

    def start(self) -> "SocketServer":
        """Serve: one accept thread per listener, plus one for a control connection given by ``clientfd``;
        call ``bind`` first. Returned for chaining."""
        for listener in self.listeners:
            listener.start()
        if self._ctrl_client is not None:
            threading.Thread(target=self._serve_ctrl, args=(self._ctrl_client,), name="ctrl-client",
                             daemon=True).start()
        return self

    def close(self) -> None:
        """Stop accepting and remove the Unix socket paths this server bound; open connections run on."""
        for listener in self.listeners:
            listener.close()
        for path in self._unlink:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _serve_data(self, conn: socket.socket) -> None:
        serve_tpm_commands(conn, self.device, once=self.disconnect)
        if self.terminate_on_data_close:
            self.terminate.set()

    def _serve_ctrl(self, conn: socket.socket) -> None:
        unix = conn.family == socket.AF_UNIX
        SwtpmControlSession(conn, self.device, unix, self._adopt_data_socket, self.terminate.set).run()
        if self.terminate_on_ctrl_close:
            self.terminate.set()

    def _adopt_data_socket(self, sock: socket.socket) -> None:
        threading.Thread(target=self._serve_data, args=(sock,), name="data-fd", daemon=True).start()
