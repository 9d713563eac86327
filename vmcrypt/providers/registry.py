"""The key providers configured in a management home, and which one is the default.

Stored as ``providers.json`` (no secrets; 0600). On first use a native
provider named ``native`` is created and made the default, so encryption
works with no setup at all.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from durable.atomic import write_atomic
from vmcrypt.errors import KeyProviderError
from vmcrypt.providers.base import KeyProvider
from vmcrypt.providers.kmip import DEFAULT_CACHE_SECONDS, DEFAULT_TIMEOUT, KmipKeyProvider, KmipSettings, parse_server
from vmcrypt.providers.native import NativeKeyProvider, PassphraseSource
from vmcrypt.providers.trusted import TrustedKeyProvider

CONFIG_FILE = "providers.json"
DEFAULT_NATIVE_NAME = "native"


@dataclass
class ProviderConfig:
    """One entry of providers.json: which provider, of which kind, with which (secret-free) settings."""

    provider_id: str
    name: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)


def _check_config(config: Any) -> None:
    """Types and required keys of providers.json; ValueError saying what is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"a JSON object was expected, not {type(config).__name__}")
    if set(config) != {"default", "providers"}:
        raise ValueError("expected exactly the keys 'default' and 'providers'")
    if not isinstance(config["default"], (str, type(None))):
        raise ValueError("'default' must be a provider id or null")
    if not isinstance(config["providers"], list):
        raise ValueError("'providers' must be a list")
    ids = set()
    for number, entry in enumerate(config["providers"], 1):
        if not isinstance(entry, dict) or set(entry) != {"provider_id", "name", "kind", "settings"}:
            raise ValueError(f"provider {number} must have exactly provider_id, name, kind and settings")
        for key in ("provider_id", "name", "kind"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise ValueError(f"provider {number}: '{key}' must be a non-empty string")
        if not isinstance(entry["settings"], dict):
            raise ValueError(f"provider {number}: 'settings' must be an object")
        if entry["kind"] == KmipKeyProvider.kind:
            try:
                KmipSettings.from_dict(entry["settings"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"provider {number}: KMIP settings are malformed ({exc!r})") from None
        if entry["kind"] == TrustedKeyProvider.kind and (
                set(entry["settings"]) != {"authority"} or not isinstance(entry["settings"]["authority"], str)):
            raise ValueError(f"provider {number}: trusted settings must be exactly {{'authority': NAME}}")
        ids.add(entry["provider_id"])
    if config["default"] is not None and config["default"] not in ids:
        raise ValueError("'default' names no configured provider")


class ProviderRegistry:
    """Looks up providers by id or name; builds the provider objects on demand."""

    def __init__(self, home: str | os.PathLike[str], passphrase: PassphraseSource | None = None) -> None:
        self.home = Path(home)
        self._passphrase = passphrase
        self._instances: dict[str, KeyProvider] = {}

    @property
    def config_path(self) -> Path:
        """``providers.json`` in the home: the configured providers and the default."""
        return self.home / CONFIG_FILE

    def _read(self) -> dict[str, Any]:
        if not self.config_path.exists():
            return {"default": None, "providers": []}
        try:
            config = json.loads(self.config_path.read_bytes())
            _check_config(config)
            return config
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise KeyProviderError(f"provider configuration is unreadable ({reason})", self.config_path) from None

    def _write(self, config: dict[str, Any]) -> None:
        write_atomic(self.config_path, json.dumps(config, indent=2, sort_keys=True).encode(), mode=0o600)

    def configs(self) -> list[ProviderConfig]:
        """Every configured provider, in the order added; KeyProviderError if providers.json is unreadable."""
        return [ProviderConfig(**entry) for entry in self._read()["providers"]]

    def default_id(self) -> str | None:
        """The id of the default provider, or None before one is configured (nothing is created here)."""
        return self._read()["default"]

    def add_native(self, name: str = DEFAULT_NATIVE_NAME, *, make_default: bool = False) -> KeyProvider:
        """Configure a new native provider and create its key store; it becomes the default if asked or if
        there is none yet. KeyProviderError if ``name`` is taken (providers.json is then left unchanged)."""
        config = self._read()
        if any(p["name"] == name for p in config["providers"]):
            raise KeyProviderError(f"a key provider named {name!r} already exists")
        entry = ProviderConfig(str(uuid.uuid4()), name, NativeKeyProvider.kind)
        config["providers"].append(asdict(entry))
        if make_default or config["default"] is None:
            config["default"] = entry.provider_id
        provider = self._build(entry)
        assert isinstance(provider, NativeKeyProvider)
        provider.initialise()
        self._write(config)
        return provider

    def add_kmip(
        self,
        name: str,
        servers: list[str],
        ca: str | os.PathLike[str],
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        make_default: bool = False,
        provider_id: str | None = None,
    ) -> KeyProvider:
        """Configure a KMIP cluster; paths are stored absolute so any working directory can use them.

        ``provider_id`` reconnects a cluster another management home already used (disaster
        recovery, a second installation): VMs name their provider by id in their key safe.
        """
        config = self._read()
        if provider_id is not None:
            try:
                provider_id = str(uuid.UUID(provider_id))
            except ValueError:
                raise KeyProviderError(f"provider id {provider_id!r} is not a UUID") from None
            if any(p["provider_id"] == provider_id for p in config["providers"]):
                raise KeyProviderError(f"a key provider with id {provider_id} already exists")
        if any(p["name"] == name for p in config["providers"]):
            raise KeyProviderError(f"a key provider named {name!r} already exists")
        if not servers:
            raise KeyProviderError("a KMIP key provider needs at least one server")
        for server in servers:
            parse_server(server)
        for path in (ca, cert, key):
            if not Path(path).is_file():
                raise KeyProviderError("KMIP CA, certificate or key file not found", path)
        if timeout <= 0 or cache_seconds < 0:
            raise KeyProviderError("KMIP timeout must be positive and cache seconds not negative")
        settings = {
            "servers": list(servers),
            "ca": str(Path(ca).resolve()),
            "cert": str(Path(cert).resolve()),
            "key": str(Path(key).resolve()),
            "timeout": float(timeout),
            "cache_seconds": float(cache_seconds),
        }
        entry = ProviderConfig(provider_id or str(uuid.uuid4()), name, KmipKeyProvider.kind, settings)
        config["providers"].append(asdict(entry))
        if make_default:
            config["default"] = entry.provider_id
        self._write(config)
        return self._build(entry)

    def add_trusted(self, name: str, authority: str, *, make_default: bool = False) -> KeyProvider:
        """A key provider backed by the imported Trust Authority ``authority``: its keys go only to
        hosts that authority attested."""
        from vmcrypt.trust.workload import AuthorityIdentity
        AuthorityIdentity.load(self.home, authority)  # imported first
        config = self._read()
        if any(p["name"] == name for p in config["providers"]):
            raise KeyProviderError(f"a key provider named {name!r} already exists")
        entry = ProviderConfig(str(uuid.uuid4()), name, TrustedKeyProvider.kind, {"authority": authority})
        config["providers"].append(asdict(entry))
        if make_default:
            config["default"] = entry.provider_id
        self._write(config)
        return self._build(entry)

    def set_default(self, id_or_name: str) -> KeyProvider:
        """Make an already configured provider the default for new encryptions."""
        provider = self.get(id_or_name)
        config = self._read()
        config["default"] = provider.provider_id
        self._write(config)
        return provider

    def default(self) -> KeyProvider:
        """The default provider; the embedded native one is created on first use."""
        default_id = self.default_id()
        if default_id is None:
            return self.add_native(make_default=True)
        return self.get(default_id)

    def get(self, id_or_name: str) -> KeyProvider:
        """The provider with this id or name, built once per registry; KeyProviderError if none matches."""
        for entry in self.configs():
            if id_or_name in (entry.provider_id, entry.name):
                return self._build(entry)
        raise KeyProviderError(f"no key provider {id_or_name!r} is configured in {self.home}")

    def _build(self, entry: ProviderConfig) -> KeyProvider:
        if entry.provider_id in self._instances:
            return self._instances[entry.provider_id]
        if entry.kind == NativeKeyProvider.kind:
            provider: KeyProvider = NativeKeyProvider(
                self.home / "native" / entry.provider_id, entry.provider_id, entry.name, self._passphrase
            )
        elif entry.kind == KmipKeyProvider.kind:
            provider = KmipKeyProvider(entry.provider_id, entry.name, KmipSettings.from_dict(entry.settings))
        elif entry.kind == TrustedKeyProvider.kind:
            provider = TrustedKeyProvider(self.home, entry.provider_id, entry.name, entry.settings["authority"])
        else:
            raise KeyProviderError(f"key provider kind {entry.kind!r} is not available in this build")
        self._instances[entry.provider_id] = provider
        return provider
