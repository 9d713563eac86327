"""The KMIP key provider: KEKs held by a standard KMIP key server cluster.

Each KEK is an AES-256 symmetric key created and activated on the server; our
key id is a random UUID stored as the key's KMIP Name attribute, because server
uids differ from server to server. Servers are tried in order (failover); a
connection is kept open to the server that last answered. Fetched KEKs may be
cached in memory only, for ``cache_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from vmcrypt.errors import KeyNotFoundError, KeyProviderError
from vmcrypt.providers.base import KeyInfo, KeyProvider, KeyState

KEK_SIZE = 32
DEFAULT_TIMEOUT = 2.0
DEFAULT_CACHE_SECONDS = 300

log = logging.getLogger(__name__)
logging.getLogger("kmip").addHandler(logging.NullHandler())  # PyKMIP's config-file notices are not ours to print

INSTALL_HINT = "the KMIP key provider needs PyKMIP: pip install 'vmcrypt[kmip]'"
_pykmip_checked = False


def require_pykmip() -> None:
    """Import PyKMIP (the ``kmip`` extra) once, or raise a KeyProviderError that says how to install it.

    PyKMIP is optional: only homes with a KMIP provider need it. Its own deprecation
    warnings (SQLAlchemy's ``MovedIn20Warning`` from its declarative models, the
    ``ssl.PROTOCOL_TLS`` DeprecationWarning when it opens a connection) say nothing a
    vmcrypt user can act on, so they are filtered for PyKMIP's modules only, before
    the first import.
    """
    global _pykmip_checked
    # on every call: filterwarnings replaces an identical filter, and a caller's
    # warnings.catch_warnings (pytest's, for one) may have reset the list since
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"kmip(\.|$)")
    if _pykmip_checked:
        return
    try:
        import kmip.pie.client  # noqa: F401
    except ImportError:
        raise KeyProviderError(INSTALL_HINT) from None
    _pykmip_checked = True
T = TypeVar("T")


class _KeyAbsent(Exception):
    """A server answered that it holds no key with the requested name."""


@dataclass(frozen=True)
class KmipSettings:
    """Where the cluster is and how to authenticate to it (paths, never secrets)."""

    servers: tuple[str, ...]
    ca: str
    cert: str
    key: str
    timeout: float = DEFAULT_TIMEOUT
    cache_seconds: float = DEFAULT_CACHE_SECONDS

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KmipSettings:
        """From providers.json; TypeError/ValueError/KeyError when a field is missing or of the wrong type."""
        servers = data["servers"]
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
            raise TypeError("'servers' must be a non-empty list of HOST:PORT strings")
        for name in ("ca", "cert", "key"):
            if not isinstance(data[name], str):
                raise TypeError(f"'{name}' must be a path")
        for name in ("timeout", "cache_seconds"):
            if name in data and (isinstance(data[name], bool) or not isinstance(data[name], (int, float))):
                raise TypeError(f"'{name}' must be a number")
        return cls(tuple(servers), data["ca"], data["cert"], data["key"],
                   float(data.get("timeout", DEFAULT_TIMEOUT)),
                   float(data.get("cache_seconds", DEFAULT_CACHE_SECONDS)))


UID_SEPARATOR = "@"


def split_key_id(key_id: str) -> tuple[str, str | None]:
    """Our key id: the key's KMIP Name, then ``@uid`` on the server that created it (a fetch hint)."""
    name, _, uid = key_id.partition(UID_SEPARATOR)
    return name, uid or None


def parse_server(server: str) -> tuple[str, int]:
    """Split ``host:port``; a KMIP cluster's servers may each listen on their own port."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KeyProviderError(f"KMIP server {server!r} is not HOST:PORT")
    return host, int(port)


def _reason(exc: BaseException) -> str:
    """A short, key-free description of why a server did not answer."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


class KmipKeyProvider(KeyProvider):
    """KEKs on a KMIP server cluster, reached over mutual TLS with our own failover loop."""

    kind = "kmip"

    def __init__(self, provider_id: str, name: str, settings: KmipSettings) -> None:
        super().__init__(provider_id, name)
        if not settings.servers:
            raise KeyProviderError(f"KMIP key provider {name!r} has no servers")
        for server in settings.servers:
            parse_server(server)
        self.settings = settings
        self.round_trips = 0
        self.fetches = 0
        self.last_server: str | None = None
        self._client: Any = None
        self._client_server: str | None = None
        self._cache: dict[str, tuple[bytes, float]] = {}

    # ------------------------------------------------------------------ connection

    def _open(self, server: str) -> Any:
        # PyKMIP is imported inside the methods that talk to a server: it takes about a second to
        # import, it is an optional extra, and most homes have no KMIP provider.
        require_pykmip()
        from kmip.pie.client import ProxyKmipClient

        host, port = parse_server(server)
        client = ProxyKmipClient(hostname=host, port=port, cert=self.settings.cert,
                                 key=self.settings.key, ca=self.settings.ca)
        client.proxy.timeout = self.settings.timeout
        client.proxy.cert_reqs = ssl.CERT_REQUIRED
        client.open()
        return client

    def close(self) -> None:
        """Drop the open connection; after any failure it may be out of step with the server."""
        client, self._client, self._client_server = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _order(self) -> list[str]:
        """Servers to try: the one currently connected first, then the configured order."""
        servers = list(self.settings.servers)
        if self._client_server in servers:
            servers.remove(self._client_server)
            servers.insert(0, self._client_server)
        return servers

    def _call(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation`` on the first server that answers; raise naming each server tried."""
        require_pykmip()  # before the loop: a missing extra is not a server failure to fail over from
        failures: list[str] = []
        for server in self._order():
            reused = self._client_server == server
            for attempt in range(2 if reused else 1):
                try:
                    return self._attempt(server, operation)
                except _KeyAbsent:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure means: try again or the next server
                    self.close()
                    if attempt == 0 and reused:
                        continue  # a kept connection may just be stale: one fresh try
                    failures.append(f"{server} ({_reason(exc)})")
                    log.warning("KMIP server %s of provider %r failed during %s: %s",
                                server, self.name, what, _reason(exc))
        raise KeyProviderError(
            f"no KMIP server of provider {self.name!r} answered ({what}): " + ", ".join(failures))

    def _attempt(self, server: str, operation: Callable[[Any], T]) -> T:
        if self._client_server != server:
            self.close()
            self._client = self._open(server)
            self._client_server = server
        try:
            return operation(self._client)
        finally:
            self.last_server = server

    # ------------------------------------------------------------------ requests

    def _request(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.round_trips += 1
        return func(*args, **kwargs)

    def _locate(self, client: Any, key_id: str) -> list[str]:
        from kmip import enums
        from kmip.core.factories.attributes import AttributeFactory

        name = AttributeFactory().create_attribute(enums.AttributeType.NAME, key_id)
        return list(self._request(client.locate, attributes=[name]))

    def _require(self, client: Any, key_id: str) -> list[str]:
        uids = self._locate(client, key_id)
        if not uids:
            raise _KeyAbsent(key_id)
        return uids

    def _create(self, client: Any) -> str:
        """A fresh id per attempt: a retried create never gives one name two different keys."""
        from kmip import enums

        name = str(uuid.uuid4())
        mask = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT,
                enums.CryptographicUsageMask.WRAP_KEY, enums.CryptographicUsageMask.UNWRAP_KEY]
        uid = self._request(client.create, enums.CryptographicAlgorithm.AES, KEK_SIZE * 8,
                            name=name, cryptographic_usage_mask=mask)
        self._request(client.activate, uid)
        return f"{name}{UID_SEPARATOR}{uid}"

    def _fetch(self, client: Any, key_id: str, *, use_hint: bool = True) -> bytes:
        """One Get at the creating server's uid when the id carries it, else Locate by name + Get.

        Get does not return the Name, so a hinted fetch is checked where it is used: a KEK
        that does not unwrap its DEK is fetched again by name (get_key_again).
        """
        from kmip.pie.exceptions import KmipOperationFailure

        name, uid = split_key_id(key_id)
        managed = None
        if uid and use_hint:
            with contextlib.suppress(KmipOperationFailure):  # not on this server: look it up by name
                managed = self._request(client.get, uid)
        if managed is None:
            managed = self._request(client.get, self._require(client, name)[0])
        self.fetches += 1
        material = bytes(managed.value)
        if len(material) != KEK_SIZE:
            raise KeyProviderError(f"KMIP key {key_id} holds {len(material)} bytes, not {KEK_SIZE}")
        return material

    def _destroy(self, client: Any, key_id: str) -> None:
        from kmip import enums
        from kmip.pie.exceptions import KmipOperationFailure

        for uid in self._require(client, split_key_id(key_id)[0]):
            with contextlib.suppress(KmipOperationFailure):  # not active: nothing to revoke
                self._request(client.revoke, enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
            self._request(client.destroy, uid)

    def _names(self, client: Any) -> list[KeyInfo]:
        infos = []
        for uid in self._request(client.locate):
            _, attrs = self._request(client.get_attributes, uid, ["Name", "Initial Date"])
            values = {a.attribute_name.value: a.attribute_value for a in attrs}
            name = values.get("Name")
            key_id = str(getattr(getattr(name, "name_value", None), "value", "") or "")
            with contextlib.suppress(ValueError):
                uuid.UUID(key_id)
                created = values.get("Initial Date")
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(created.value)) if created else ""
                infos.append(KeyInfo(f"{key_id}{UID_SEPARATOR}{uid}", stamp, KeyState.ACTIVE))
        return infos

    # ------------------------------------------------------------------ cache

    def _cached(self, key_id: str) -> bytes | None:
        entry = self._cache.get(key_id)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._cache[key_id]
            return None
        return entry[0]

    def _remember(self, key_id: str, material: bytes) -> None:
        if self.settings.cache_seconds > 0:
            self._cache[key_id] = (material, time.monotonic() + self.settings.cache_seconds)

    def forget(self) -> None:
        """Empty the in-memory KEK cache."""
        self._cache.clear()

    # ------------------------------------------------------------------ interface

    def create_key(self) -> str:
        """Create and activate an AES-256 key on the first server that answers; the id names it and its uid.

        KeyProviderError if PyKMIP is missing or no server answered (each server tried is named)."""
        return self._call("create", self._create)

    def get_key(self, key_id: str) -> bytes:
        """The KEK, from the memory cache or the cluster (one Get at the creating server's uid when it answers).

        KeyNotFoundError if the server holds no key of that name; KeyProviderError if no server answered."""
        material = self._cached(key_id)
        if material is not None:
            return material
        try:
            material = self._call("get", lambda client: self._fetch(client, key_id))
        except _KeyAbsent:
            raise KeyNotFoundError(
                f"key {key_id} is unknown to KMIP server {self.last_server} of provider {self.name!r}") from None
        self._remember(key_id, material)
        return material

    def get_key_again(self, key_id: str) -> bytes:
        """Bypass the cache and the uid hint: Locate the key by name, then Get it (a uid may name another key
        on another server). Raises as get_key."""
        self._cache.pop(key_id, None)
        try:
            material = self._call("get", lambda client: self._fetch(client, key_id, use_hint=False))
        except _KeyAbsent:
            raise KeyNotFoundError(
                f"key {key_id} is unknown to KMIP server {self.last_server} of provider {self.name!r}") from None
        self._remember(key_id, material)
        return material

    def destroy_key(self, key_id: str) -> None:
        """Revoke and destroy every server object with the key's name and drop it from the cache.

        KeyNotFoundError if the server holds no key of that name; KeyProviderError if no server answered."""
        self._cache.pop(key_id, None)
        try:
            self._call("destroy", lambda client: self._destroy(client, key_id))
        except _KeyAbsent:
            raise KeyNotFoundError(
                f"key {key_id} is unknown to KMIP server {self.last_server} of provider {self.name!r}") from None

    def list_keys(self) -> list[KeyInfo]:
        """The keys on the answering server whose Name is one of our ids, all shown active (a destroyed key
        is gone from the server); KeyProviderError if no server answered."""
        return self._call("list", self._names)

    # ------------------------------------------------------------------ high-water marks

    def record_generation(self, key_id: str, file_role: str, generation: int, *, allow_lower: bool = False) -> None:
        """Not kept on KMIP yet (a no-op): a VM whose key lives on a KMIP cluster is protected
        against a rolled-back .nvram by the inventory's record only, when the VM is managed.
        (A KMIP custom attribute on the key could hold it; not done.)"""

    def generation(self, key_id: str, file_role: str) -> int | None:
        """Nothing is recorded on KMIP yet: always None (see record_generation)."""
        return None
