"""A host as a running process: boots once, keeps its TPM and logs, answers on its endpoint.

A real host's PCRs exist only while it is powered on; so does this process's TPM. ``HostDaemon``
takes the host's lock first (``run/host.lock``, flock: one daemon per host, and a second one never
re-boots the TPM under the first), boots the host (``boot_host``: Startup(CLEAR), the measured
chain), writes ``run/host.pid`` and serves the requests of ``host_endpoint`` on ``run/host.sock``
(0600 in a 0700 directory), one connection and one request at a time: the TPM has one caller.
``stop`` ends serving; ``close`` shuts the TPM down (TPM2_Shutdown, state saved), removes the
socket and pid file and releases the lock. Starting again is a reboot: fresh PCRs, fresh logs.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from durable.atomic import write_atomic
from vmcrypt.errors import VmcryptError
from vmcrypt.trust.collect import CollectionError, HostEvidence
from vmcrypt.trust.evidence import Challenge, EvidenceError
from vmcrypt.trust.host_boot import TPM_DIR, BootedHost, boot_host
from vmcrypt.trust.host_endpoint import LOCK_FILE, PID_FILE, run_dir, socket_path
from vmcrypt.trust.images import BootImage, Tamper
from vtpm.host_protocol import MAX_LINE
from vtpm.server.endpoints import reachable
from vtpm.storage import PlainStateStore

CONNECTION_TIMEOUT = 10.0  # a client that sends no full line in this time is dropped (in total, not per byte)
OPS = ("ping", "describe", "identity", "answer", "attest")


class HostRunning(VmcryptError):
    """Another daemon already runs this host."""


class RequestError(Exception):
    """A malformed or refused request; the message is the error line's text."""

    def __init__(self, message: str, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons


@dataclass(frozen=True)
class BootSpec:
    """What the host boots: an image, optionally tampered, Secure Boot on or off."""

    image: BootImage
    tamper: Tamper | None = None
    secure_boot: bool = True


class _Server(socketserver.UnixStreamServer):
    daemon: "HostDaemon"


class _Handler(socketserver.StreamRequestHandler):
    timeout = CONNECTION_TIMEOUT

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Server)
        if not _peer_allowed(self.connection):
            return  # another local user: closed without an answer
        line = _read_line(self.connection, time.monotonic() + CONNECTION_TIMEOUT)
        if not line:
            return
        self.connection.settimeout(CONNECTION_TIMEOUT)  # for the answer
        if len(line) > MAX_LINE:
            answer: dict[str, Any] = {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
        else:
            answer = server.daemon.handle_line(line)
        try:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass  # the client went away; nothing was changed for it


def _peer_allowed(connection: socket.socket) -> bool:
    """Only this process's own user or root may talk to the host (the socket's 0600 mode says the same;
    this holds even if the mode is loosened or the socket is handed on)."""
    try:
        creds = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return False
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def _read_line(connection: socket.socket, deadline: float) -> bytes:
    """One request line, at most MAX_LINE + 1 bytes, all of it before ``deadline``: a client dripping a
    byte at a time cannot hold the daemon (it serves one connection at a time) past it. b"" if it fails."""
    data = bytearray()
    while b"\n" not in data and len(data) <= MAX_LINE:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        connection.settimeout(left)
        try:
            chunk = connection.recv(65536)
        except (OSError, socket.timeout):
            return b""
        if not chunk:
            break
        data += chunk
    end = data.find(b"\n")
    return bytes(data[:end + 1] if end >= 0 else data)


class HostDaemon:
    """One host's process: its lock, its booted TPM and its endpoint."""

    def __init__(self, home: str | os.PathLike[str], name: str, spec: BootSpec) -> None:
        from vmcrypt.trust.host_attestation import host_directory
        self.home = Path(home)
        self.name = name
        self.directory = host_directory(home, name)
        self.spec = spec
        self.booted: BootedHost | None = None
        self.booted_at: datetime.datetime | None = None
        self._evidence: HostEvidence | None = None
        self._lock_fd: int | None = None
        self._server: _Server | None = None

    @property
    def socket_path(self) -> Path:
        """``HOST_DIR/run/host.sock``: the Unix socket the daemon answers on."""
        return socket_path(self.directory)

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        """Lock, boot, listen; HostRunning if another daemon holds the host."""
        run = run_dir(self.directory)
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        run.mkdir(mode=0o700, exist_ok=True)
        if run.is_symlink() or not run.is_dir():
            raise VmcryptError(f"{run} is not a directory (a link planted there is not followed)")
        os.chmod(run, 0o700)
        try:
            fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise VmcryptError(f"cannot open the host's lock file {run / LOCK_FILE}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HostRunning(f"host {self.name} is already running (pid {self._pid_of_other()}): "
                              "stop it before starting it again") from None
        self._lock_fd = fd
        try:
            self.booted = boot_host(self.directory, self.spec.image, secure_boot=self.spec.secure_boot,
                                    tamper=self.spec.tamper, name=self.name)
            self.booted_at = datetime.datetime.now(datetime.timezone.utc)
            self._listen()
            write_atomic(run / PID_FILE, f"{os.getpid()}\n".encode(), mode=0o600)  # replaces a planted link
        except BaseException:
            self.close()
            raise

    def _pid_of_other(self) -> str:
        try:
            return (run_dir(self.directory) / PID_FILE).read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def _listen(self) -> None:
        path = self.socket_path
        try:
            path.unlink()  # a stale socket of a daemon that died (we hold the lock: none runs)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)  # the socket is 0600 from its first moment
        try:
            with reachable(str(path)) as where:
                server = _Server(where, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        server.daemon = self
        self._server = server

    def serve(self) -> None:
        """Answer requests until ``stop``."""
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """End ``serve`` (from another thread or a signal handler's helper thread)."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()

    def close(self) -> None:
        """Shut the TPM down (its state saved), remove the endpoint and pid file, release the lock."""
        if self._server is not None:
            self._server.server_close()
            self._server = None
        run = run_dir(self.directory)
        if self._lock_fd is not None:
            for leftover in (self.socket_path, run / PID_FILE):
                try:
                    leftover.unlink()
                except FileNotFoundError:
                    pass
        if self.booted is not None:
            self.booted.client.shutdown()
            PlainStateStore(self.directory / TPM_DIR).save(self.booted.tpm.state.to_bytes())
            self.booted = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ requests

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """One request line → one answer; never raises for what a client sends."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return {"ok": False, "error": "the request is not JSON"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "the request must be a JSON object"}
        op = request.get("op")
        if op not in OPS:
            return {"ok": False, "error": f"unknown op {str(op)[:40]!r} (one of: {', '.join(OPS)})"}
        try:
            return {"ok": True, **getattr(self, f"_op_{op}")(request)}
        except RequestError as exc:
            answer: dict[str, Any] = {"ok": False, "error": str(exc)}
            if exc.reasons is not None:
                answer["reasons"] = exc.reasons
            return answer

    def _host(self) -> BootedHost:
        if self.booted is None:
            raise RequestError("the host is not booted")
        return self.booted

    def evidence(self) -> HostEvidence:
        """The booted host's TPM as evidence, made on first use; RequestError when the host is not booted or its TPM
        cannot give evidence."""
        if self._evidence is None:
            try:
                self._evidence = HostEvidence(self._host())
            except CollectionError as exc:
                raise RequestError(f"the host's TPM cannot give evidence: {exc}") from None
        return self._evidence

    @staticmethod
    def _fields(request: dict[str, Any], allowed: set[str]) -> None:
        unknown = set(request) - allowed - {"op"}
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(sorted(unknown))[:200]}")

    def _op_ping(self, request: dict[str, Any]) -> dict[str, Any]:
        self._fields(request, set())
        return {"host": self.name, "pid": os.getpid()}

    def _op_describe(self, request: dict[str, Any]) -> dict[str, Any]:
        self._fields(request, set())
        host = self._host()
        assert self.booted_at is not None
        return {"host": self.name, "version": host.version, "booted_at": self.booted_at.isoformat(),
                "secure_boot": host.secure_boot, "pid": os.getpid()}

    def _op_identity(self, request: dict[str, Any]) -> dict[str, Any]:
        import base64
        self._fields(request, set())
        ek, ak = self.evidence().identity()
        return {"ek_certificate": base64.b64encode(ek).decode(), "ak_public": base64.b64encode(ak).decode()}

    def _op_answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self._fields(request, {"challenge"})
        if not isinstance(request.get("challenge"), dict):
            raise RequestError("challenge must be a JSON object (nonce, credential_blob, encrypted_secret, expires)")
        try:
            challenge = Challenge.from_json(json.dumps(request["challenge"]))
        except EvidenceError as exc:
            raise RequestError(f"the challenge is malformed: {exc}") from None
        try:
            report = self.evidence().answer(challenge, host=self.name, version=self._host().version)
        except CollectionError as exc:
            raise RequestError(f"the host's TPM refused the challenge: {exc}") from None
        return {"report": json.loads(report.to_json())}

    def _op_attest(self, request: dict[str, Any]) -> dict[str, Any]:
        from vmcrypt.trust.agent import AttestationRefused, HostAgent
        from vmcrypt.trust.workload import AuthorityIdentity
        self._fields(request, {"authority"})
        authority = request.get("authority")
        if not isinstance(authority, str) or not authority or "/" in authority or authority.startswith("."):
            raise RequestError("authority must be the name of an imported Trust Authority")
        try:
            identity = AuthorityIdentity.load(self.home, authority)
            agent = HostAgent(self.home, self.name, identity, self.evidence(), version=self._host().version)
            token = agent.attest()
            claims = identity.token_verifier().verify(token)
        except AttestationRefused as exc:
            raise RequestError(str(exc), exc.reasons) from None
        except VmcryptError as exc:
            raise RequestError(str(exc)) from None
        return {"host": self.name, "authority": authority, "expires": claims.expires.isoformat()}
