"""Reaching a running host (``vmcrypt host run``) over its endpoint; no TPM engine is loaded here.

A host daemon keeps the TPM it booted (PCRs live only as long as the process) and answers one
JSON object per line on ``HOME/hosts/NAME/run/host.sock`` (directory 0700, socket 0600), with the
framing of ``vtpm.host_protocol`` (``HostClient``: one connection per request). Requests:

- ``{"op": "ping"}`` → ``{"ok": true, "host": NAME, "pid": PID}``
- ``{"op": "describe"}`` → ``{"ok": true, "host", "version", "booted_at", "secure_boot", "pid"}``
- ``{"op": "identity"}`` → ``{"ok": true, "ek_certificate": B64 DER, "ak_public": B64 TPM2B_PUBLIC}``
- ``{"op": "answer", "challenge": {...}}`` (a ``Challenge`` as JSON) → ``{"ok": true, "report": {...}}``
  (an ``AttestationReport`` of this host, for the version it booted)
- ``{"op": "attest", "authority": NAME}``: the host agent's two rounds with that imported Trust
  Authority; the token is kept as the agent keeps it → ``{"ok": true, "host", "authority", "expires"}``

A refusal is ``{"ok": false, "error": "..."}`` (with ``"reasons"`` when a Trust Authority refused).
``RemoteHost`` is the evidence side of such a host for the verifier and the host agent.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from vmcrypt.errors import VmcryptError
from vmcrypt.trust.evidence import AttestationReport, Challenge, EvidenceError
from vtpm.host_protocol import HostClient, HostError, HostUnavailable

RUN_DIR = "run"
SOCKET_FILE = "host.sock"
PID_FILE = "host.pid"
LOCK_FILE = "host.lock"
WHAT = "host daemon"
TIMEOUT = 60.0  # an answer runs ActivateCredential and a quote on a busy machine

__all__ = ["HostDaemonError", "HostNotRunning", "RemoteHost", "running_host", "run_dir", "socket_path"]


class HostDaemonError(VmcryptError):
    """A running host refused a request or answered something unusable; the message says which."""


class HostNotRunning(HostDaemonError):
    """No daemon answers for the host (none runs, or it went away mid-request)."""


def run_dir(host_dir: str | os.PathLike[str]) -> Path:
    """``HOST_DIR/run``: where a running host's daemon keeps its socket."""
    return Path(host_dir) / RUN_DIR


def socket_path(host_dir: str | os.PathLike[str]) -> Path:
    """``HOST_DIR/run/host.sock``: the Unix socket of the host's daemon."""
    return run_dir(host_dir) / SOCKET_FILE


def _unb64(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise HostDaemonError(f"the host's {name} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HostDaemonError(f"the host's {name} is not base64") from None


class RemoteHost:
    """The evidence side of a running host, asked over its socket (``Evidence`` of the host agent).

    ``HostNotRunning`` when no daemon answers; ``HostDaemonError`` when it refuses or answers badly."""

    def __init__(self, host_dir: str | os.PathLike[str], timeout: float = TIMEOUT) -> None:
        self.name = Path(host_dir).name
        self.client = HostClient(socket_path(host_dir), timeout, what=WHAT)

    def _request(self, **fields: Any) -> dict[str, Any]:
        try:
            return self.client.request(**fields)
        except HostUnavailable as exc:
            raise HostNotRunning(f"host {self.name} is not running ({exc})") from None
        except HostError as exc:
            raise HostDaemonError(f"host {self.name}: {exc}") from None

    def ping(self) -> dict[str, Any]:
        """The daemon's name and process id: proof that it runs; HostNotRunning when none answers."""
        return self._request(op="ping")

    def describe(self) -> dict[str, Any]:
        """What the host booted and when."""
        return self._request(op="describe")

    def identity(self) -> tuple[bytes, bytes]:
        """(EK certificate DER, AK TPM2B_PUBLIC), as ``HostEvidence.identity``."""
        answer = self._request(op="identity")
        return _unb64("EK certificate", answer.get("ek_certificate")), _unb64("AK public", answer.get("ak_public"))

    def answer(self, challenge: Challenge, *, host: str = "", version: str = "") -> AttestationReport:
        """The host's report for ``challenge``. ``host`` and ``version`` are ignored: the daemon reports its
        own name and the version it booted (the verifier trusts neither without the log)."""
        answer = self._request(op="answer", challenge=json.loads(challenge.to_json()))
        try:
            return AttestationReport.from_json(json.dumps(answer.get("report")))
        except EvidenceError as exc:
            raise HostDaemonError(f"host {self.name}: its report is malformed: {exc}") from None

    def attest(self, authority: str) -> dict[str, Any]:
        """Have the host's agent attest to the imported Trust Authority ``authority`` (the token stays on the host)."""
        return self._request(op="attest", authority=authority)


def running_host(host_dir: str | os.PathLike[str]) -> RemoteHost | None:
    """The host's daemon if one answers now (a ping), else None: what a host agent uses to re-attest."""
    if not socket_path(host_dir).exists():
        return None
    host = RemoteHost(host_dir)
    try:
        host.ping()
    except HostDaemonError:
        return None
    return host
