"""Hash algorithms the vTPM implements, and the TPM's key derivation functions.

KDFa (SP 800-108 counter mode with HMAC, TPM 2.0 Part 1 11.4.10.2) is what
the spec uses to derive keys from seeds and proofs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from vtpm.constants import ALG


@dataclass(frozen=True)
class HashAlg:
    """A hash algorithm of the TPM: its TPM_ALG_ID, hashlib name, digest size and block size."""
    alg: ALG
    name: str  # hashlib name
    size: int
    block_size: int


HASHES: dict[int, HashAlg] = {
    ALG.SHA1: HashAlg(ALG.SHA1, "sha1", 20, 64),
    ALG.SHA256: HashAlg(ALG.SHA256, "sha256", 32, 64),
    ALG.SHA384: HashAlg(ALG.SHA384, "sha384", 48, 128),
    ALG.SHA512: HashAlg(ALG.SHA512, "sha512", 64, 128),
}
MAX_DIGEST = 64

_KBKDF_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    ALG.SHA1: hashes.SHA1,
    ALG.SHA256: hashes.SHA256,
    ALG.SHA384: hashes.SHA384,
    ALG.SHA512: hashes.SHA512,
}


def digest_size(alg: int) -> int:
    """The digest size of hash algorithm ``alg``; KeyError for one this TPM does not implement."""
    return HASHES[alg].size


# hashlib's named constructors: hashlib.new(name) looks the name up on every call.
_CONSTRUCTORS = {alg: getattr(hashlib, info.name) for alg, info in HASHES.items()}


def new_hash(alg: int) -> "hashlib._Hash":
    """A new hashlib object for ``alg``, for digests fed in parts (sequences, audit)."""
    return _CONSTRUCTORS[alg]()


def digest(alg: int, *parts: bytes) -> bytes:
    """The ``alg`` digest of the parts concatenated."""
    return _CONSTRUCTORS[alg](b"".join(parts)).digest()


def hmac_digest(alg: int, key: bytes, *parts: bytes) -> bytes:
    """The ``alg`` HMAC of the parts concatenated under ``key``."""
    # hmac.digest: OpenSSL's one-shot HMAC, without the Python HMAC object
    return hmac.digest(key, b"".join(parts), HASHES[alg].name)


def kdfa(alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (Part 1 11.4.10.2): SP 800-108 counter-mode HMAC, through ``cryptography``'s KBKDFHMAC.

    Each block is HMAC(key, [i]32 || label || 00 || contextU || contextV || [bits]32).
    The TPM's fixed input is passed whole as ``fixed`` (KBKDF's own label/context
    layout would always insert the 00 separator, where the TPM adds it only after a
    non-empty label that lacks one). An odd ``bits`` keeps only the low bits of the
    first byte, as the spec says.
    """
    if bits <= 0:
        return b""
    if label and not label.endswith(b"\x00"):
        label += b"\x00"
    fixed = b"".join((label, context_u, context_v, bits.to_bytes(4, "big")))
    derived = KBKDFHMAC(
        algorithm=_KBKDF_HASHES[alg](),
        mode=Mode.CounterMode,
        length=(bits + 7) // 8,
        rlen=4,
        llen=None,
        location=CounterLocation.BeforeFixed,
        label=None,
        context=None,
        fixed=fixed,
    ).derive(key)
    if bits % 8 == 0:
        return derived
    result = bytearray(derived)
    result[0] &= (1 << (bits % 8)) - 1
    return bytes(result)
