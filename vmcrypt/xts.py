"""AES-XTS-256 over many data units: the hot path of every encrypted file.

A data unit is a run of ``unit_size`` bytes encrypted under one tweak; the
tweak is the unit's index as a 128-bit little-endian integer (IEEE 1619).
Units are independent, so any unit of a disk can be read or rewritten alone.

Two backends do the same thing:

- ``openssl``: a small compiled loop over OpenSSL's EVP API that keeps one key
  schedule and only resets the tweak per unit (built at install time).
- ``cryptography``: one ``cryptography`` cipher per unit; correct everywhere,
  about an order of magnitude slower. Used only if the extension is missing.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_SIZE = 64
MIN_UNIT_SIZE = 16
DEFAULT_UNIT_SIZE = 4096
MAX_UNIT_SIZE = 1 << 24
CIPHER_NAME = "AES-XTS-256"


class XtsKeyError(ValueError):
    """The key cannot be used for AES-XTS-256."""


class _Backend(Protocol):
    def encrypt(self, first_unit: int, data: bytes, unit_size: int = ..., /) -> bytes: ...
    def decrypt(self, first_unit: int, data: bytes, unit_size: int = ..., /) -> bytes: ...


class _CryptographyBackend:
    """One `cryptography` cipher per data unit: the portable fallback."""

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.AES(key)

    def _run(self, encrypt: bool, first_unit: int, data: bytes, unit_size: int) -> bytes:
        view = memoryview(data)
        out = bytearray(len(view))
        for offset in range(0, len(view), unit_size):
            tweak = (first_unit + offset // unit_size).to_bytes(16, "little")
            cipher = Cipher(self._algorithm, modes.XTS(tweak))
            ctx = cipher.encryptor() if encrypt else cipher.decryptor()
            chunk = view[offset : offset + unit_size]
            out[offset : offset + len(chunk)] = ctx.update(chunk) + ctx.finalize()
        return bytes(out)

    def encrypt(self, first_unit: int, data: bytes, unit_size: int = DEFAULT_UNIT_SIZE) -> bytes:
        return self._run(True, first_unit, data, unit_size)

    def decrypt(self, first_unit: int, data: bytes, unit_size: int = DEFAULT_UNIT_SIZE) -> bytes:
        return self._run(False, first_unit, data, unit_size)


try:
    from vmcrypt._xts import XtsContext as _OpenSSLBackend

    BACKEND = "openssl"
except ImportError:  # extension not built (no compiler or OpenSSL headers)
    _OpenSSLBackend = None  # type: ignore[assignment,misc]
    BACKEND = "cryptography"


def _validate_key(key: bytes) -> bytes:
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise XtsKeyError(f"{CIPHER_NAME} needs a {KEY_SIZE}-byte key, got {len(key)} bytes")
    if hmac.compare_digest(key[:32], key[32:]):
        raise XtsKeyError(f"{CIPHER_NAME} key halves must differ (IEEE 1619 requires distinct keys)")
    return key


def _validate_request(first_unit: int, length: int, unit_size: int) -> None:
    if not MIN_UNIT_SIZE <= unit_size <= MAX_UNIT_SIZE:
        raise ValueError(f"data unit size must be between 16 bytes and 16 MiB, got {unit_size}")
    if first_unit < 0:
        raise ValueError(f"data unit index must not be negative, got {first_unit}")
    tail = length % unit_size
    if tail and tail < MIN_UNIT_SIZE:
        raise ValueError(f"the last data unit has {tail} bytes; XTS needs at least 16")
    units = -(-length // unit_size)
    if units and first_unit + units - 1 >= 1 << 64:
        raise OverflowError("data unit index exceeds 64 bits")


class XtsCipher:
    """An AES-XTS-256 key ready to encrypt or decrypt runs of data units.

    Keep one per key: constructing it computes the key schedule once.
    """

    __slots__ = ("_impl",)

    def __init__(self, key: bytes, *, backend: str | None = None) -> None:
        key = _validate_key(key)
        name = backend or BACKEND
        if name == "openssl":
            if _OpenSSLBackend is None:
                raise RuntimeError("the OpenSSL XTS extension is not built")
            self._impl: _Backend = _OpenSSLBackend(key)
        elif name == "cryptography":
            self._impl = _CryptographyBackend(key)
        else:
            raise ValueError(f"unknown XTS backend {name!r}")

    def __repr__(self) -> str:
        return f"<XtsCipher {CIPHER_NAME} key=<hidden>>"

    def encrypt_units(self, first_unit: int, data: bytes, unit_size: int = DEFAULT_UNIT_SIZE) -> bytes:
        """Encrypt ``data`` as consecutive units, the first with index ``first_unit``."""
        _validate_request(first_unit, len(data), unit_size)
        return self._impl.encrypt(first_unit, data, unit_size)

    def decrypt_units(self, first_unit: int, data: bytes, unit_size: int = DEFAULT_UNIT_SIZE) -> bytes:
        """Decrypt ``data`` as consecutive units, the first with index ``first_unit``."""
        _validate_request(first_unit, len(data), unit_size)
        return self._impl.decrypt(first_unit, data, unit_size)


def encrypt_units(key: bytes, first_unit: int, data: bytes, unit_size: int = DEFAULT_UNIT_SIZE) -> bytes:
    """One-shot form of :meth:`XtsCipher.encrypt_units`."""
    return XtsCipher(key).encrypt_units(first_unit, data, unit_size)


def decrypt_units(key: bytes, first_unit: int, data: bytes, unit_size: int = DEFAULT_UNIT_SIZE) -> bytes:
    """One-shot form of :meth:`XtsCipher.decrypt_units`."""
    return XtsCipher(key).decrypt_units(first_unit, data, unit_size)
