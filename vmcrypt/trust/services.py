"""The Trust Authority's two HTTPS services (Starlette apps; served with mutual TLS by ``serving``).

**Attestation service** (``build_attestation_app``): ``POST /challenge`` with a host's EK
certificate and AK public area answers a ``Challenge`` (fresh nonce + credential);
``POST /attest`` with the ``AttestationReport`` answers ``{"token", "verdict"}`` when the verifier
passes the host, else 403 ``{"error", "reasons"}`` listing every reason. Only imported hosts of the
trusted cluster may ask, each only for itself: the verified client certificate's name
(``host:NAME``) must match the report, and the EK certificate must be the one imported for NAME.

**Key provider service** (``build_key_provider_app``): fronts the KMIP cluster configured by the
TrustedAdmins. ``POST /keys`` (the management plane of the trusted cluster only, client
``management:CLUSTER``) creates a key and answers its id, never its material. ``POST /keys/release``
(a host only, client ``host:NAME``, ``Authorization: Bearer TOKEN``) answers the key when the token
is valid and unexpired, was issued for NAME of the trusted cluster with the EK imported for NAME, and
the key was created for that cluster. The management plane asking for material is refused.

Every refusal is written to the Trust Authority's audit log with its reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from vmcrypt.errors import VmcryptError
from vmcrypt.trust.authority import TrustAuthority, TrustAuthorityError
from vmcrypt.trust.evidence import AttestationReport, EvidenceError
from vmcrypt.trust.pki import HOST_PREFIX, MANAGEMENT_PREFIX
from vmcrypt.trust.serving import client_name
from vmcrypt.trust.token import TokenError, fingerprint, utc_now

MAX_BODY = 4 * 1024 * 1024  # an attestation report with both logs is tens of KiB
BODY_TIMEOUT = 10.0  # seconds to receive a whole body: a client dripping bytes is cut off (408)
MAX_KEY_ID = 256  # characters; key ids are UUIDs or short names
MAX_CHALLENGES_PER_HOST = 8  # outstanding (unanswered, unexpired) challenges a host may hold


class Refused(Exception):
    """A request refused with an HTTP status and reasons (every reason is audited)."""

    def __init__(self, status: int, error: str, reasons: list[str] | None = None) -> None:
        self.status = status
        self.error = error
        self.reasons = reasons or []
        super().__init__(error)


@dataclass(frozen=True)
class Call:
    """What a handler gets: the verified client's name, the request body and its headers."""

    client: str
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body as JSON; Refused (422) when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser's stack
            raise Refused(422, "the request is not JSON") from None


def _route(ta: TrustAuthority, action: str, handler: Callable[[Call], Any]) -> Callable[[Request], Any]:
    """Wrap a handler: the verified client's name, the body read (bounded), the handler on a worker thread
    (KMIP calls and the verifier block), refusals answered as JSON and audited."""
    def run(call: Call) -> JSONResponse:
        try:
            return JSONResponse(handler(call))
        except Refused as refusal:
            ta.audit.append(call.client or "unauthenticated client", action, "refused",
                            "; ".join([refusal.error, *refusal.reasons]))
            return JSONResponse({"error": refusal.error, "reasons": refusal.reasons}, status_code=refusal.status)
        except (TrustAuthorityError, VmcryptError) as exc:
            ta.audit.append(call.client or "unauthenticated client", action, "failed", str(exc))
            return JSONResponse({"error": str(exc), "reasons": []}, status_code=409)

    def refuse(client: str, status: int, error: str) -> JSONResponse:
        ta.audit.append(client or "unauthenticated client", action, "refused", error)
        return JSONResponse({"error": error, "reasons": []}, status_code=status,
                            headers={"connection": "close"})

    async def read(request: Request) -> bytes | None:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return None
        return bytes(body)

    async def endpoint(request: Request) -> JSONResponse:
        client = client_name(request)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return refuse(client, 413, f"the request is larger than {MAX_BODY} bytes")  # before reading any of it
        try:
            body = await asyncio.wait_for(read(request), BODY_TIMEOUT)
        except asyncio.TimeoutError:
            return refuse(client, 408, f"the request body did not arrive within {BODY_TIMEOUT:.0f} s")
        if body is None:
            return refuse(client, 413, f"the request is larger than {MAX_BODY} bytes")
        return await run_in_threadpool(run, Call(client, body, dict(request.headers)))
    return endpoint


def _host_of(client: str, ta: TrustAuthority) -> tuple[str, dict[str, Any]]:
    """The imported host a client certificate names; refused for anyone else."""
    config = ta.config()
    if not client.startswith(HOST_PREFIX):
        raise Refused(403, f"client {client!r} is not a host of the trusted cluster")
    host = client[len(HOST_PREFIX):]
    if host not in config["hosts"]:
        raise Refused(403, f"host {host!r} is not an imported host of the trusted cluster")
    return host, config


class _VerifierCache:
    """One verifier (it remembers the challenges it issued) per configuration version."""

    def __init__(self, ta: TrustAuthority) -> None:
        self.ta = ta
        self.lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._verifier: Any = None

    def get(self) -> Any:
        from vmcrypt.trust.trust_policy import make_verifier
        stat = self.ta.config_path.stat()
        stamp = (stat.st_mtime_ns, stat.st_ino)
        if stamp != self._stamp:
            self._verifier, self._stamp = make_verifier(self.ta.policy()), stamp
        return self._verifier


def _b64_field(data: Any, name: str) -> bytes:
    try:
        return base64.b64decode(data[name], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise Refused(422, f"the request needs '{name}' as base64") from None


class _Outstanding:
    """The challenges each host holds and has not answered yet, so that one host cannot flood the
    verifier's store (and push other hosts' challenges out of it): at most ``limit`` per host, each
    forgotten when answered or when it expires. Only imported hosts reach it, so the whole is bounded by
    hosts x limit. Callers hold the verifier lock."""

    def __init__(self, limit: int = MAX_CHALLENGES_PER_HOST) -> None:
        self.limit = limit
        self._by_host: dict[str, deque[tuple[bytes, datetime.datetime]]] = {}
        self._verifier: Any = None

    def follow(self, verifier: Any) -> None:
        """A new verifier (the configuration changed) holds none of the old challenges: neither do we."""
        if verifier is not self._verifier:
            self._by_host.clear()
            self._verifier = verifier

    def _live(self, host: str) -> deque[tuple[bytes, datetime.datetime]]:
        now = utc_now()
        held = self._by_host.setdefault(host, deque())
        while held and held[0][1] <= now:
            held.popleft()
        return held

    def admit(self, host: str) -> None:
        if len(self._live(host)) >= self.limit:
            raise Refused(429, "attestation refused", [f"host {host}: already holds {self.limit} unanswered "
                                                       "challenges; answer one or wait for them to expire"])

    def issued(self, host: str, nonce: bytes, expires: datetime.datetime) -> None:
        self._live(host).append((nonce, expires))

    def answered(self, host: str, nonce: bytes) -> None:
        held = self._live(host)
        for entry in list(held):
            if entry[0] == nonce:
                held.remove(entry)


def build_attestation_app(ta: TrustAuthority) -> Starlette:
    """The attestation service: ``POST /challenge`` (an imported host's EK and AK, answered with a challenge), ``POST
    /attest`` (its report, answered with the verdict and, when passed, a token) and ``GET /health``; clients are
    named by their verified certificates, refusals audited."""
    verifiers = _VerifierCache(ta)
    outstanding = _Outstanding()

    def challenge(call: Call) -> Any:
        host, config = _host_of(call.client, ta)
        data = call.json()
        ek, ak = _b64_field(data, "ek_certificate"), _b64_field(data, "ak_public")
        if fingerprint(ek) not in config["hosts"][host]:
            raise Refused(403, "attestation refused", [f"host {host}: the EK certificate is not the one imported "
                                                       "for this host"])
        with verifiers.lock:
            verifier = verifiers.get()
            outstanding.follow(verifier)
            outstanding.admit(host)
            try:
                issued = verifier.challenge(ek, ak)
            except (VmcryptError, ValueError) as exc:
                raise Refused(403, "attestation refused", [f"host {host}: {exc}"]) from None
            outstanding.issued(host, issued.nonce, issued.expires)
        return json.loads(issued.to_json())

    def attest(call: Call) -> Any:
        host, config = _host_of(call.client, ta)
        try:
            report = AttestationReport.from_json(call.body)
        except EvidenceError as exc:
            raise Refused(422, f"the attestation report is malformed: {exc}") from None
        reasons = []
        if report.host != host:
            reasons.append(f"the report names host {report.host!r} but the client is host {host!r}")
        if fingerprint(report.ek_certificate) not in config["hosts"][host]:
            reasons.append(f"host {host}: the EK certificate is not the one imported for this host")
        with verifiers.lock:
            verdict = verifiers.get().verify(report)  # the nonce is used up whatever the verdict
            outstanding.answered(host, report.nonce)
        reasons.extend(verdict.reasons)
        record = {"host": host, "passed": verdict.passed and not reasons, "reasons": reasons,
                  "version": verdict.version, "checked_at": verdict.checked_at.isoformat()}
        ta.record_attestation(host, record)
        if reasons or not verdict.passed:
            raise Refused(403, "attestation refused", reasons or ["the verifier did not pass the host"])
        token = ta.token_issuer().issue(host=host, ek_fingerprint=fingerprint(report.ek_certificate),
                                        version=verdict.version or report.version, cluster=config["cluster"])
        ta.audit.append(call.client, "attest", "ok", f"host {host} passed, version {verdict.version}")
        return {"token": token, "verdict": json.loads(verdict.to_json())}

    def health(call: Call) -> Any:
        return {"ok": True, "service": "attestation", "name": ta.config()["name"]}

    return Starlette(routes=[
        Route("/challenge", _route(ta, "attestation challenge", challenge), methods=["POST"]),
        Route("/attest", _route(ta, "attest", attest), methods=["POST"]),
        Route("/health", _route(ta, "health", health), methods=["GET"]),
    ])


class _Kmip:
    """The KMIP provider behind the key provider service (or the Trust Authority's own native key store),
    rebuilt when its settings change."""

    def __init__(self, ta: TrustAuthority) -> None:
        self.ta = ta
        self.lock = threading.Lock()
        self._settings: dict[str, Any] | None = None
        self._provider: Any = None

    def get(self, settings: dict[str, Any] | None) -> Any:
        from vmcrypt.providers.kmip import KmipKeyProvider, KmipSettings
        from vmcrypt.providers.native import NativeKeyProvider
        if settings is None:
            raise Refused(503, "no KMIP cluster is configured behind the key provider service")
        if settings != self._settings:
            if settings.get("native"):
                native = NativeKeyProvider(self.ta.root / "native", "trust-authority-native", "trust-authority")
                native.initialise()
                self._provider = native
            else:
                self._provider = KmipKeyProvider("trust-authority-kmip", "trust-authority",
                                                 KmipSettings.from_dict(settings))
            self._settings = settings
        return self._provider


def build_key_provider_app(ta: TrustAuthority) -> Starlette:
    """The key provider service: ``POST /keys`` (the trusted cluster's management plane creates a key), ``POST
    /keys/release`` (an attested host presents its token and gets the key; the management plane never does) and ``GET
    /health``."""
    kmip = _Kmip(ta)

    def create(call: Call) -> Any:
        config = ta.config()
        if not config["cluster"] or call.client != MANAGEMENT_PREFIX + config["cluster"]:
            raise Refused(403, f"client {call.client!r} is not the management plane of the trusted cluster")
        with kmip.lock:  # one writer of keys.json at a time
            key_id = kmip.get(config["kmip"]).create_key()
            ta.record_key(key_id, config["cluster"])
        ta.audit.append(call.client, "create key", "ok", key_id)
        return {"key_id": key_id}

    def release(call: Call) -> Any:
        if call.client.startswith(MANAGEMENT_PREFIX):
            raise Refused(403, "key material is released only to attested hosts, never to the management plane")
        host, config = _host_of(call.client, ta)
        data = call.json()
        key_id = data.get("key_id") if isinstance(data, dict) else None
        if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID or not key_id.isprintable():
            raise Refused(422, f"the request needs 'key_id' (printable, at most {MAX_KEY_ID} characters)")
        header = call.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise Refused(401, f"key {key_id}: no attestation token")
        try:
            claims = ta.token_verifier().verify(header[len("Bearer "):])
        except TokenError as exc:
            raise Refused(403, f"key {key_id} refused to host {host}: {exc}") from None
        reasons = []
        if claims.host != host:
            reasons.append(f"the token is for host {claims.host!r}, the client is host {host!r}")
        if claims.cluster != config["cluster"]:
            reasons.append(f"the token is for cluster {claims.cluster!r}, not the trusted cluster")
        if claims.ek_fingerprint not in config["hosts"][host]:
            reasons.append("the token's EK is not the one imported for this host")
        issued = ta.issued_keys().get(key_id)
        if issued is None or issued["cluster"] != config["cluster"]:
            reasons.append(f"key {key_id} was not created for the trusted cluster")
        if reasons:
            raise Refused(403, f"key {key_id} refused to host {host}", reasons)
        with kmip.lock:
            material = kmip.get(config["kmip"]).get_key(key_id)
        ta.audit.append(call.client, "release key", "ok", f"{key_id} to host {host} (token {claims.token_id})")
        return {"key_id": key_id, "key": base64.b64encode(material).decode()}

    def health(call: Call) -> Any:
        return {"ok": True, "service": "key provider", "name": ta.config()["name"], "time": utc_now().isoformat()}

    return Starlette(routes=[
        Route("/keys", _route(ta, "create key", create), methods=["POST"]),
        Route("/keys/release", _route(ta, "release key", release), methods=["POST"]),
        Route("/health", _route(ta, "health", health), methods=["GET"]),
    ])


@dataclass
class RunningServices:
    """Both services served from a thread of this process (real sockets): for embedding and the demo."""

    attestation_url: str
    key_provider_url: str
    _servers: list[Any]
    _thread: threading.Thread

    def stop(self) -> None:
        """Ask both servers to exit and wait up to 10 s for their thread."""
        for server in self._servers:
            server.should_exit = True
        self._thread.join(10)


def start_in_thread(ta: TrustAuthority, host: str = "127.0.0.1") -> RunningServices:
    """Serve both services with mutual TLS on free loopback ports from a background thread."""
    import asyncio
    import time

    from vmcrypt.service import _Server, _tcp_socket
    from vmcrypt.trust.serving import mtls_config
    servers, sockets, urls = [], [], []
    for number, app in enumerate((build_attestation_app(ta), build_key_provider_app(ta))):
        sock = _tcp_socket(host, 0)
        cert, key = ta.ca.issue_server(ta.root / "server" / str(number), host)
        servers.append(_Server(mtls_config(app, cert, key, ta.ca.cert_path)))
        sockets.append(sock)
        urls.append(f"https://{host}:{sock.getsockname()[1]}")

    async def run() -> None:
        await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(servers, sockets)))

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="trust-services", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not all(server.started for server in servers):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TrustAuthorityError("the trust services did not start")
        time.sleep(0.01)
    return RunningServices(urls[0], urls[1], servers, thread)


def serve_authority(ta: TrustAuthority, attestation: str, keys: str) -> None:
    """Both services of ``ta`` with mutual TLS until SIGTERM/SIGINT (one process, two listeners)."""
    from vmcrypt.trust.serving import serve_mtls
    ta.config()  # refuse to start when not enabled

    def issue(label: str, host: str) -> Any:
        return ta.ca.issue_server(ta.root / "server" / label, host)
    serve_mtls([(build_attestation_app(ta), attestation), (build_key_provider_app(ta), keys)], issue,
               ta.ca.cert_path,
               lambda urls: f"vmcrypt trust services: attestation {urls[0]} key-provider {urls[1]}")
