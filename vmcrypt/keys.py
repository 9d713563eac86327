"""The key hierarchy: KEK (in a key provider) -> wraps the per-VM DEK -> DEK protects files.

RFC 3394 AES key wrap (RFC 5649 with padding for odd lengths) via
``cryptography``. Unwrapped KEKs are cached in memory only, per KeyManager.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap,
    aes_key_wrap_with_padding,
)

from vmcrypt.container import ContainerHeader
from vmcrypt.errors import WrongKeyError
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm
from vmcrypt.providers.base import KeyProvider
from vmcrypt.providers.registry import ProviderRegistry

DEK_SIZE = 32


def new_dek() -> bytes:
    """A fresh random data encryption key (32 bytes: AES-XTS-256 and HMAC keys are derived from it)."""
    return secrets.token_bytes(DEK_SIZE)


def wrap_dek(kek: bytes, dek: bytes) -> tuple[WrapAlgorithm, bytes]:
    """Wrap ``dek`` under ``kek``: RFC 3394 when the length allows, else RFC 5649."""
    if len(dek) % 8 == 0 and len(dek) >= 16:
        return WrapAlgorithm.AES_KW, aes_key_wrap(kek, dek)
    return WrapAlgorithm.AES_KWP, aes_key_wrap_with_padding(kek, dek)


def unwrap_dek(kek: bytes, reference: KeyReference) -> bytes:
    """Unwrap the DEK in ``reference``; a wrong KEK or damaged wrap raises WrongKeyError."""
    try:
        if reference.wrap_algorithm == WrapAlgorithm.AES_KW:
            return aes_key_unwrap(kek, reference.wrapped_dek)
        if reference.wrap_algorithm == WrapAlgorithm.AES_KWP:
            return aes_key_unwrap_with_padding(kek, reference.wrapped_dek)
    except (InvalidUnwrap, ValueError):
        raise WrongKeyError(
            f"key {reference.key_id} of provider {reference.provider_id} does not unwrap this DEK"
        ) from None
    raise WrongKeyError(f"DEK wrap {reference.wrap_algorithm.label!r} needs no key provider")


class KeyManager:
    """Creates, unwraps and re-wraps DEKs through the configured key providers."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self.registry = registry
        self._kek_cache: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"<KeyManager home={self.registry.home} cached_keks={len(self._kek_cache)}>"

    def provider(self, id_or_name: str | None = None) -> KeyProvider:
        """The provider with that id or name, or the home's default one."""
        return self.registry.get(id_or_name) if id_or_name else self.registry.default()

    def _kek(self, provider_id: str, key_id: str) -> bytes:
        cached = self._kek_cache.get((provider_id, key_id))
        if cached is None:
            cached = self.registry.get(provider_id).get_key(key_id)
            self._kek_cache[(provider_id, key_id)] = cached
        return cached

    def new_data_key(self, provider: str | None = None) -> DataKey:
        """A fresh DEK wrapped by a fresh KEK (one KEK per VM, as vSphere does)."""
        return self.wrap(new_dek(), provider)

    def wrap(self, dek: bytes, provider: str | None = None) -> DataKey:
        """Wrap ``dek`` under a new KEK of ``provider`` (the default if None)."""
        chosen = self.provider(provider)
        key_id = chosen.create_key()
        kek = self._kek(chosen.provider_id, key_id)
        algorithm, wrapped = wrap_dek(kek, dek)
        return DataKey(dek, KeyReference(chosen.provider_id, key_id, algorithm, wrapped))

    def unlock(self, reference: KeyReference) -> DataKey:
        """Fetch the KEK named by ``reference`` and unwrap its DEK."""
        kek = self._kek(reference.provider_id, reference.key_id)
        try:
            return DataKey(unwrap_dek(kek, reference), reference)
        except WrongKeyError:
            # a provider's fast path (e.g. a KMIP uid hint) may have named another key: ask once more, surely
            kek = self.registry.get(reference.provider_id).get_key_again(reference.key_id)
            self._kek_cache[(reference.provider_id, reference.key_id)] = kek
            return DataKey(unwrap_dek(kek, reference), reference)

    def header_key(self, header: ContainerHeader) -> bytes:
        """Key source for container reads: unwrap the DEK named in the file's own header."""
        return self.unlock(header.reference).dek
