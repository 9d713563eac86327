"""A client of the management service: log in, call a route, log out.

The service is reached over its Unix socket (``unix:PATH``, by default
``HOME/run/vmcrypt.sock``) or over HTTPS (``https://HOST:PORT``, the server
certificate verified against the service CA: ``--ca`` or ``HOME/service-ca.pem``).
Refusals come back as ``ServiceError`` with the service's message and the
missing privilege; a service that does not answer as ``ServiceUnreachable``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import httpx

from vmcrypt.errors import VmcryptError

TIMEOUT = httpx.Timeout(30.0, read=None)  # operations (a backup, a power-on) take as long as they take


class ServiceError(VmcryptError):
    """The service refused or failed the request; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int, privilege: str | None = None) -> None:
        self.status = status
        self.privilege = privilege
        super().__init__(message)


class ServiceUnreachable(VmcryptError):
    """Nothing answers at the service's address."""


class ServiceClient:
    """A client of the management service over its Unix socket or HTTPS; VmcryptError for an HTTPS URL without the
    service CA."""
    def __init__(self, url: str, ca_file: str | os.PathLike[str] | None = None) -> None:
        """``url``: ``unix:PATH`` or ``https://HOST:PORT``; ``ca_file`` verifies an HTTPS server."""
        self.url = url
        self.token: str | None = None
        if url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=url.removeprefix("unix:"))
            self.http = httpx.Client(transport=transport, base_url="http://vmcrypt", timeout=TIMEOUT)
        elif url.startswith("https://"):
            if ca_file is None:
                raise VmcryptError("an https:// management service needs the service CA's certificate (--ca FILE)")
            context = ssl.create_default_context(cafile=os.fspath(ca_file))
            self.http = httpx.Client(base_url=url, verify=context, timeout=TIMEOUT)
        else:
            raise VmcryptError(f"the management service is reached at unix:PATH or https://HOST:PORT, not {url!r}")

    def close(self) -> None:
        """End the session on the service (if logged in) and close the connection."""
        if self.token:
            try:
                self.request("DELETE", "/session")
            except VmcryptError:
                pass
            self.token = None
        self.http.close()

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self, user: str, password: str) -> None:
        """Log in as ``user``; the session token goes with every later request. VmcryptError when the service refuses.
        """
        self.token = self.request("POST", "/session", json={"user": user, "password": password})["token"]

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                content: Any = None) -> Any:
        """The route's JSON answer, or its bytes when it answers with a file."""
        try:
            response = self.http.request(method, path, json=json, params=params, content=content,
                                         headers=self._headers())
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        _raise_for(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        self.last_headers = response.headers
        return response.content

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _unreachable(self, exc: Exception) -> ServiceUnreachable:
        return ServiceUnreachable(f"management service not reachable at {self.url}: {exc}")

    def download(self, method: str, path: str, destination: Path, *, json: Any = None) -> httpx.Headers:
        """Stream a route's file answer into ``destination``; the answer's headers."""
        try:
            with self.http.stream(method, path, json=json, headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                with open(destination, "wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                return response.headers
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def _raise_for(response: httpx.Response) -> None:
    """A refusal or failure of the service as ``ServiceError``, with its message and missing privilege."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        message, privilege = body.get("error") or response.text, body.get("privilege")
    except ValueError:
        message, privilege = response.text or response.reason_phrase, None
    raise ServiceError(message, response.status_code, privilege)
