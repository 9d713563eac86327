"""Serving the trust services over HTTPS with mutual TLS on uvicorn.

uvicorn verifies the client's certificate (``ssl_cert_reqs=CERT_REQUIRED`` against the Trust
Authority's CA) but does not pass it to the application. ``PeerCertProtocol`` (uvicorn's h11
protocol) adds it to each request's scope as the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``), so a route knows *which* verified client
is calling. The process loop, sockets and signal handling are the management service's
(``vmcrypt.service``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from starlette.requests import Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from vmcrypt.service import _parse_listen, _serve_all, _Server, _tcp_socket
from vmcrypt.trust.pki import common_name

READY_LINE = "vmcrypt trust services: serving"

# Limits against a peer that holds connections open (slow-loris) or sends oversized heads; the body's own
# size and time limits are the routes' (``services.MAX_BODY``, ``services.BODY_TIMEOUT``).
HEAD_TIMEOUT = 10.0  # seconds from connecting (or from the last answer) to a complete request head
KEEP_ALIVE = 5  # seconds an idle kept-alive connection stays open
MAX_HEAD = 16 * 1024  # bytes of request line and headers
MAX_CONNECTIONS = 64  # open connections and running requests; beyond this the answer is 503


class PeerCertProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the verified client certificate in the ASGI TLS extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the request-head deadline and hand the verified client certificate to the app in the ASGI ``tls``
        extension."""
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                scope = {**scope, "extensions": {**scope.get("extensions", {}),
                                                  "tls": {"client_cert_chain": chain}}}
            await inner(scope, receive, send)
        self.app = app

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timeout)

    def _head_timeout(self) -> None:
        """Close a connection still waiting for a complete request head (uvicorn has no such deadline)."""
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:
            if not self.transport.is_closing():
                self.transport.close()

    def on_response_complete(self) -> None:
        """Start the head deadline again for the next request on a kept-alive connection."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the head deadline: the connection is gone."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


def client_name(request: Request) -> str:
    """The common name of the verified client certificate ('' when there is none)."""
    chain = request.scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    if not chain:
        return ""
    return common_name(x509.load_pem_x509_certificate(chain[0].encode()))


def mtls_config(app: Any, cert: Path, key: Path, client_ca: Path) -> uvicorn.Config:
    """A uvicorn configuration that demands a client certificate issued by ``client_ca``."""
    return uvicorn.Config(app=app, lifespan="off", log_level="warning", access_log=False, http=PeerCertProtocol,
                          ssl_certfile=str(cert), ssl_keyfile=str(key), ssl_ca_certs=str(client_ca),
                          ssl_cert_reqs=ssl.CERT_REQUIRED, timeout_keep_alive=KEEP_ALIVE,
                          h11_max_incomplete_event_size=MAX_HEAD, limit_concurrency=MAX_CONNECTIONS)


def serve_mtls(apps: list[tuple[Any, str]], issue: Callable[[str, str], tuple[Path, Path]], client_ca: Path,
               announce: Callable[[list[str]], str] | None = None) -> None:
    """Serve each (app, HOST:PORT) with mutual TLS until SIGTERM/SIGINT; ``issue(label, host)`` gives the
    server certificate and key. Prints one ready line naming every address."""
    servers, urls = [], []
    for number, (app, listen) in enumerate(apps):
        host, port = _parse_listen(listen)
        sock = _tcp_socket(host, port)
        cert, key = issue(str(number), host)
        servers.append((_Server(mtls_config(app, cert, key, client_ca)), sock))
        urls.append(f"https://{host}:{sock.getsockname()[1]}")
    ready = announce(urls) if announce else f"{READY_LINE} on {' and '.join(urls)}"
    try:
        asyncio.run(_serve_all(servers, ready))
    finally:
        for _, sock in servers:
            sock.close()
