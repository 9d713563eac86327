"""The `vtpm host` control protocol, and a client for it.

One JSON object per line each way, over the host's Unix socket (mode 0600).
Requests:

- ``{"op": "add", "name": N, "state": DIR | "vm": VMX, ["key_file": F],
  ["ctrl_unix": PATH], ["data_unix": PATH], ["tcp_port": P], ["tcp_host": H],
  ["startup_clear": true], ["incoming": true]}`` → ``{"ok": true, "vtpm": {...}}``
  (``incoming``: the target of a live migration on shared storage; a state
  directory's lock is taken with the migrated state, not at the add)
- ``{"op": "remove", "name": N}`` → ``{"ok": true, "removed": N}``
- ``{"op": "list"}`` → ``{"ok": true, "vtpms": [{...}, ...]}``
- ``{"op": "ping"}`` → ``{"ok": true, "pid": PID, "vtpms": COUNT}``

A refusal is ``{"ok": false, "error": "..."}``. Paths must be absolute (the
host's working directory is not the client's). This module loads no engine,
so a management plane can drive a host without importing the TPM.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from vtpm.server.endpoints import Endpoints, reachable

# a module-level name: inside HostClient, ``list`` is the method below, not the builtin
VtpmRows = list[dict[str, Any]]

MAX_LINE = 64 * 1024
MAX_NAME = 200
ADD_FIELDS = {"op", "name", "state", "vm", "key_file", "ctrl_unix", "data_unix", "tcp_port", "tcp_host",
              "startup_clear", "incoming"}


class ProtocolError(ValueError):
    """A malformed request: the message says which field and why."""


@dataclass(frozen=True)
class AddRequest:
    """A checked ``add`` request: the vTPM's name, where it listens, which state it serves."""

    name: str
    endpoints: Endpoints
    state: str | None = None
    vm: str | None = None
    key_file: str | None = None
    startup_clear: bool = False
    incoming: bool = False

    def store_key(self) -> str:
        """The real path of what is served: one vTPM per VM (.vmx) or state directory."""
        return os.path.realpath(self.vm or self.state or "")


def _path(request: dict[str, Any], field: str) -> str | None:
    value = request.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value or not os.path.isabs(value):
        raise ProtocolError(f"{field} must be an absolute path")
    return value


def parse_add(request: dict[str, Any]) -> AddRequest:
    """Check a decoded ``add`` request field by field; ProtocolError names the first bad one."""
    unknown = set(request) - ADD_FIELDS
    if unknown:
        raise ProtocolError(f"unknown field(s) {', '.join(sorted(unknown))}")
    name = request.get("name")
    if (not isinstance(name, str) or not name or len(name) > MAX_NAME
            or any(ord(c) < 0x20 or c == "\x7f" for c in name)):
        raise ProtocolError(f"name must be 1..{MAX_NAME} printable characters")
    state, vm, key_file = _path(request, "state"), _path(request, "vm"), _path(request, "key_file")
    if (state is None) == (vm is None):
        raise ProtocolError("give exactly one of state (a directory) and vm (a .vmx)")
    if key_file is not None and state is None:
        raise ProtocolError("key_file goes with state")
    port = request.get("tcp_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65534):
        raise ProtocolError("tcp_port must be 1..65534 (control on tcp_port + 1)")
    host = request.get("tcp_host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ProtocolError("tcp_host must be an address")
    ctrl, data = _path(request, "ctrl_unix"), _path(request, "data_unix")
    if data is not None and ctrl is None:
        ctrl = f"{data}.ctrl"
    if ctrl is None and port is None:
        raise ProtocolError("give ctrl_unix (and/or data_unix) or tcp_port: a vTPM needs an endpoint")
    if ctrl is not None and ctrl == data:
        raise ProtocolError("ctrl_unix and data_unix must differ")
    startup_clear = request.get("startup_clear", False)
    if not isinstance(startup_clear, bool):
        raise ProtocolError("startup_clear must be true or false")
    incoming = request.get("incoming", False)
    if not isinstance(incoming, bool):
        raise ProtocolError("incoming must be true or false")
    return AddRequest(name, Endpoints(ctrl, data, port, host), state, vm, key_file, startup_clear, incoming)


# ----------------------------------------------------------------------------- the client


class HostError(Exception):
    """The host refused a request; the message is its reason."""


class HostUnavailable(HostError):
    """No host answers on the socket (none runs, or it went away mid-request)."""


class HostClient:
    """Requests to a `vtpm host`, one connection per request."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0, *, what: str = "vtpm host") -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.what = what  # how errors name the peer (the same framing serves other line-JSON daemons)

    def request(self, **fields: Any) -> dict[str, Any]:
        """Send one request (fields that are None are left out); the answer, or HostError with the host's reason."""
        line = json.dumps({k: v for k, v in fields.items() if v is not None}).encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                with reachable(self.path) as where:
                    sock.connect(where)
            except OSError as exc:
                raise HostUnavailable(f"no {self.what} answers at {self.path}: {exc.strerror or exc}") from None
            try:
                sock.sendall(line)
                answer = bytearray()
                while not answer.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise HostUnavailable(f"the {self.what} at {self.path} closed the connection")
                    answer += chunk
                    if len(answer) > 64 * MAX_LINE:
                        raise HostError("the host's answer is too long")
            except OSError as exc:
                raise HostUnavailable(f"the {self.what} at {self.path} did not answer: {exc}") from None
        try:
            reply = json.loads(answer)
        except ValueError:
            raise HostError(f"the {self.what} answered with a line that is not JSON") from None
        if not isinstance(reply, dict):
            raise HostError(f"the {self.what} answered with a line that is not a JSON object")
        if not reply.get("ok"):
            raise HostError(reply.get("error", "refused"))
        return reply

    def ping(self) -> dict[str, Any]:
        """Whether a host answers (HostUnavailable if not): its process id and how many vTPMs it serves."""
        return self.request(op="ping")

    def add(self, name: str, **fields: Any) -> dict[str, Any]:
        """Ask the host to serve a vTPM (fields as ``AddRequest``); its row as ``list`` shows it."""
        return self.request(op="add", name=name, **fields)["vtpm"]

    def remove(self, name: str) -> None:
        """Ask the host to stop serving ``name`` (its state is saved)."""
        self.request(op="remove", name=name)

    def list(self) -> VtpmRows:
        """One row per hosted vTPM."""
        return self.request(op="list")["vtpms"]
