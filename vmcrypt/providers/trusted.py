"""The ``trusted`` key provider: keys held by a Trust Authority, released only to hosts it attested.

The management plane may create keys (over mutual TLS with the cluster's management certificate;
it learns the key id only). Key material comes from the Trust Authority's key provider service
through the host agent of the attested host the VM is placed on: the host given by the operation
in progress (``on_host``), else the host the key was last placed on (``workload.place``), which is
how the vTPM process of a powered-on VM fetches its key. Without an attested host there is no key.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path

import httpx

from vmcrypt.errors import KeyProviderError, VmcryptError
from vmcrypt.providers.base import KeyInfo, KeyProvider

_CURRENT_HOST: contextvars.ContextVar[str | None] = contextvars.ContextVar("trusted_provider_host", default=None)
TIMEOUT = 30.0


@contextlib.contextmanager
def on_host(host: str | None) -> Iterator[None]:
    """Within this block, trusted-provider keys are fetched by ``host``'s agent."""
    token = _CURRENT_HOST.set(host)
    try:
        yield
    finally:
        _CURRENT_HOST.reset(token)


class TrustedKeyProvider(KeyProvider):
    """Keys of a Trust Authority: created by the management plane, released only to attested hosts."""

    kind = "trusted"

    def __init__(self, home: Path, provider_id: str, name: str, authority: str) -> None:
        super().__init__(provider_id, name)
        self.home = Path(home)
        self.authority_name = authority

    def authority(self):  # noqa: ANN201 - AuthorityIdentity; imported late (vmcrypt.trust imports providers)
        """The Trust Authority this provider is bound to, loaded from the home on each call (WorkloadTrustError if
        it is not imported)."""
        from vmcrypt.trust.workload import AuthorityIdentity
        return AuthorityIdentity.load(self.home, self.authority_name)

    def create_key(self) -> str:
        """Ask the Trust Authority's key provider service (mutual TLS) for a new key; only its id comes back.

        KeyProviderError if the service is unreachable or does not return a key id."""
        authority = self.authority()
        try:
            with httpx.Client(base_url=authority.key_provider_url, verify=authority.management_context(),
                              timeout=TIMEOUT) as client:
                response = client.post("/keys")
        except httpx.HTTPError as exc:
            raise KeyProviderError(f"the key provider service of {self.authority_name} is not reachable: "
                                   f"{type(exc).__name__}") from None
        data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200 or not isinstance(data.get("key_id"), str):
            raise KeyProviderError(f"the Trust Authority {self.authority_name} did not create a key: "
                                   f"{data.get('error', response.status_code)}")
        return data["key_id"]

    def health(self) -> dict[str, object]:
        """Whether the Trust Authority's key provider service answers this cluster's management plane."""
        try:
            authority = self.authority()
            with httpx.Client(base_url=authority.key_provider_url, verify=authority.management_context(),
                              timeout=5.0) as client:
                response = client.get("/health")
            ok = response.status_code == 200
            return {"ok": ok, "authority": self.authority_name, "url": authority.key_provider_url,
                    "detail": "answers" if ok else f"status {response.status_code}"}
        except (httpx.HTTPError, VmcryptError, OSError) as exc:
            return {"ok": False, "authority": self.authority_name, "detail": f"{type(exc).__name__}: {exc}"[:200]}

    def get_key(self, key_id: str) -> bytes:
        """The key, released through the agent of the host chosen by ``on_host`` or the host it is placed on.

        KeyProviderError when no host is chosen, the service refuses the host or cannot be reached."""
        from vmcrypt.trust.agent import agent_for
        from vmcrypt.trust.workload import placed_host
        host = _CURRENT_HOST.get() or placed_host(self.home, key_id)
        if host is None:
            raise KeyProviderError(f"key {key_id} of the trusted key provider {self.name} is released only to a host "
                                   "attested by its Trust Authority, and no host is chosen for it")
        return agent_for(self.home, host, self.authority()).fetch_key(key_id)

    def destroy_key(self, key_id: str) -> None:
        """Always raises KeyProviderError: these keys are destroyed by the Trust Authority's administrators."""
        raise KeyProviderError(f"keys of the trusted key provider {self.name} are destroyed at its Trust Authority's "
                               "KMIP cluster, by its administrators")

    def list_keys(self) -> list[KeyInfo]:
        """Always empty: the Trust Authority does not list its keys to the management plane."""
        return []
