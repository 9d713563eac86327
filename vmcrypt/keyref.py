"""How an encrypted file names the key that opens it, without holding any secret.

A :class:`KeyReference` travels in every container header and in the VM's
``encryption.keySafe``: which key provider, which key (KEK) there, and the
DEK wrapped by that KEK. A :class:`DataKey` is the unwrapped DEK together
with its reference; it exists only in memory and never prints its secret.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from vmcrypt.errors import VmcryptError

KEYSAFE_SCHEME = "vmcrypt-keysafe-v1"


class WrapAlgorithm(enum.IntEnum):
    """How the DEK in a reference is protected."""

    NONE = 0  # the key id names the DEK itself (e.g. a key store's master key)
    AES_KW = 1  # RFC 3394 AES key wrap under the provider's KEK
    AES_KWP = 2  # RFC 5649 AES key wrap with padding under the provider's KEK
    SCRYPT = 3  # DEK derived from a passphrase; ``wrapped_dek`` holds the scrypt parameters

    @property
    def label(self) -> str:
        """The algorithm's name in a key safe (lower case, hyphens)."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> "WrapAlgorithm":
        """The algorithm with key-safe name ``label``; ValueError for an unknown one."""
        for member in cls:
            if member.label == label:
                return member
        raise ValueError(f"unknown key wrap algorithm {label!r}")


@dataclass(frozen=True)
class KeyReference:
    """Public facts naming a DEK: safe to store in clear next to the data."""

    provider_id: str
    key_id: str
    wrap_algorithm: WrapAlgorithm = WrapAlgorithm.AES_KW
    wrapped_dek: bytes = b""

    def to_keysafe(self) -> str:
        """Encode as the value of ``encryption.keySafe`` in a ``.vmx``."""
        query = urlencode(
            {
                "provider": self.provider_id,
                "key": self.key_id,
                "wrap": self.wrap_algorithm.label,
                "dek": base64.urlsafe_b64encode(self.wrapped_dek).decode("ascii"),
            }
        )
        return f"{KEYSAFE_SCHEME}?{query}"

    @classmethod
    def from_keysafe(cls, text: str) -> "KeyReference":
        """The reference a key safe string names; VmcryptError when it is not a key safe of this format or lacks a
        field."""
        if not isinstance(text, str):
            raise VmcryptError(f"a key safe is text, not {type(text).__name__}")
        scheme, sep, query = text.partition("?")
        if scheme != KEYSAFE_SCHEME or not sep:
            raise VmcryptError(f"unrecognised key safe (expected {KEYSAFE_SCHEME})")
        try:
            fields = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
            return cls(
                provider_id=fields["provider"],
                key_id=fields["key"],
                wrap_algorithm=WrapAlgorithm.from_label(fields["wrap"]),
                wrapped_dek=base64.b64decode(fields["dek"].encode("ascii"), altchars=b"-_", validate=True),
            )
        except KeyError as exc:
            raise VmcryptError(f"malformed key safe: no {exc.args[0]} field") from None
        except ValueError as exc:  # a query that does not parse, an unknown wrap, a DEK that is not base64
            raise VmcryptError(f"malformed key safe: {exc}") from None


@dataclass(frozen=True)
class DataKey:
    """An unwrapped DEK and the reference that names it. Lives in memory only."""

    dek: bytes = field(repr=False)
    reference: KeyReference

    def fingerprint(self) -> str:
        """A short non-secret identifier of the DEK, to tell two DEKs apart in logs."""
        return hmac.new(self.dek, b"vmcrypt dek fingerprint", hashlib.sha256).hexdigest()[:16]
