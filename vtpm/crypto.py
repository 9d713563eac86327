"""Hash algorithms the vTPM implements, and the TPM's key derivation functions.

KDFa (SP 800-108 counter mode with HMAC, TPM 2.0 Part 1 11.4.10.2) is what
the spec uses to derive keys from seeds and proofs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from vtpm.constants import ALG


@dataclass(frozen=True)
class HashAlg:
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


def digest_size(alg: int) -> int:
    return HASHES[alg].size


# hashlib's named constructors: hashlib.new(name) looks the name up on every call.
_CONSTRUCTORS = {alg: getattr(hashlib, info.name) for alg, info in HASHES.items()}


def new_hash(alg: int) -> "hashlib._Hash":
    return _CONSTRUCTORS[alg]()


def digest(alg: int, *parts: bytes) -> bytes:
    return _CONSTRUCTORS[alg](b"".join(parts)).digest()


def hmac_digest(alg: int, key: bytes, *parts: bytes) -> bytes:
    # hmac.digest: OpenSSL's one-shot HMAC, without the Python HMAC object
    return hmac.digest(key, b"".join(parts), HASHES[alg].name)


def kdfa(alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa: HMAC-based SP 800-108 counter-mode KDF, the label NUL-terminated."""
    if label and not label.endswith(b"\x00"):
        label += b"\x00"
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hmac_digest(
            alg, key, counter.to_bytes(4, "big"), label, context_u, context_v, bits.to_bytes(4, "big")
        )
        counter += 1
    result = bytearray(out[: (bits + 7) // 8])
    if bits % 8:
        result[0] &= (1 << (bits % 8)) - 1
    return bytes(result)
