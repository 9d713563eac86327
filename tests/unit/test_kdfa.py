"""KDFa through cryptography's KBKDFHMAC gives the TPM's layout (Part 1 11.4.10.2) byte for byte.

The reference below is the spec's formula written out with hmac; the cases cover
the ones where KBKDF's own label/context layout would differ: an empty label (no
00 separator), a label that already ends in 00, and a bit count that is not a
multiple of 8.
"""

from __future__ import annotations

import hmac

import pytest

from vtpm.constants import ALG
from vtpm.crypto import HASHES, kdfa


def reference(alg: int, key: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> bytes:
    if label and not label.endswith(b"\x00"):
        label += b"\x00"
    out, counter = b"", 1
    while len(out) * 8 < bits:
        block = counter.to_bytes(4, "big") + label + u + v + bits.to_bytes(4, "big")
        out += hmac.digest(key, block, HASHES[alg].name)
        counter += 1
    result = bytearray(out[: (bits + 7) // 8])
    if bits % 8:
        result[0] &= (1 << (bits % 8)) - 1
    return bytes(result)


@pytest.mark.parametrize("alg", [ALG.SHA1, ALG.SHA256, ALG.SHA384, ALG.SHA512])
@pytest.mark.parametrize("label", [b"", b"CFB", b"STORAGE\x00"])
@pytest.mark.parametrize("bits", [7, 257, 2048])
def test_kdfa_matches_the_spec_layout(alg: int, label: bytes, bits: int) -> None:
    key, u, v = bytes(range(32)), b"\x11" * 20, b"\x22" * 3
    assert kdfa(alg, key, label, u, v, bits) == reference(alg, key, label, u, v, bits)


def test_kdfa_known_answer() -> None:
    # pinned: SHA-256, key 00..1f, "STORAGE", contexts "u"/"v", 256 bits
    got = kdfa(ALG.SHA256, bytes(range(32)), b"STORAGE", b"u", b"v", 256)
    assert got == reference(ALG.SHA256, bytes(range(32)), b"STORAGE", b"u", b"v", 256)
    assert got.hex() == PINNED


PINNED = "b9111c96cfbfb9332603ad9589dc9e9c612b104d486cf80a622c8eff2e5b7590"


def test_empty_request_gives_empty_output() -> None:
    assert kdfa(ALG.SHA256, b"k", b"L", b"", b"", 0) == b""
