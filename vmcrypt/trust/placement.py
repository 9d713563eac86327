"""The management plane's rule for VMs on a ``trusted`` key provider: they run only on attested hosts.

``destination(keys, inventory_hosts, provider_id, host)`` is asked before a power-on, resume, clone
or migration changes anything: for a VM whose key provider is ``trusted`` the destination host must
hold a valid token of that provider's Trust Authority (``workload.check_attested``), else
``HostNotTrusted`` ("destination host is not trusted and attested", with the host's reasons). Without
a host, the first attested host of the cluster is chosen. VMs on other providers may go to any host of
the inventory, attested or not, and keep their provider.
"""

from __future__ import annotations

from pathlib import Path

from vmcrypt.errors import KeyProviderError
from vmcrypt.inventory import InventoryError
from vmcrypt.keys import KeyManager
from vmcrypt.providers.trusted import TrustedKeyProvider
from vmcrypt.trust.workload import NOT_TRUSTED, HostNotTrusted, check_attested, known_hosts, place


def trusted_provider(keys: KeyManager, provider_id: str | None) -> TrustedKeyProvider | None:
    """The VM's key provider when it is a ``trusted`` one configured here, else None (no provider, another kind, or one
    unknown here: the operation itself says so when it needs the key)."""
    if provider_id is None:
        return None
    try:
        provider = keys.registry.get(provider_id)
    except KeyProviderError:  # not configured here: the operation itself says so when it needs the key
        return None
    return provider if isinstance(provider, TrustedKeyProvider) else None


def destination(keys: KeyManager, inventory_hosts: list[str], provider_id: str | None, host: str | None) -> str | None:
    """The host the VM goes to (None: no particular host); refused when a trusted VM's host is not attested."""
    if host is not None and host not in inventory_hosts:
        raise InventoryError(f"no host '{host}' in the inventory")
    provider = trusted_provider(keys, provider_id)
    if provider is None:
        return host
    identity = provider.authority()
    if host is not None:
        check_attested(identity, host)
        return host
    for candidate in known_hosts(Path(keys.registry.home)):
        if candidate in inventory_hosts:
            try:
                check_attested(identity, candidate)
                return candidate
            except HostNotTrusted:
                continue
    raise HostNotTrusted(f"{NOT_TRUSTED}: no host of the cluster holds a token of Trust Authority {identity.name}")


def record_placement(keys: KeyManager, provider_id: str | None, key_id: str | None, host: str | None) -> None:
    """Remember where a trusted VM's key is used now, for the host's vTPM process."""
    if host is not None and key_id is not None and trusted_provider(keys, provider_id) is not None:
        place(Path(keys.registry.home), key_id, host)
