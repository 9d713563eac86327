"""RSA primes from a KDFa stream (vtpm.rsakeygen): deterministic, well-formed, and pinned.

The pinned modulus is this implementation's own answer for a fixed seed (not a
vector from the spec or from libtpms): it changes only if the derivation of
every RSA primary changes, which would change every persistent EK.
"""

from __future__ import annotations

import hashlib
import math

import gmpy2
import pytest

from vtpm.constants import ALG
from vtpm.objects import KdfStream, Public, generate
from vtpm.rsakeygen import adjust_candidate, rsa_prime, rsa_primes

from support.tpm_key_helpers import rsa_storage_template

SEED = bytes(range(64))
PINNED_N_SHA256 = "1666fd8ba77dcf9cc690e584c19d952fa66c99fb9257e3b1b7ab1fbb5dc0b4fb"


def stream(context: bytes = b"known answer") -> KdfStream:
    return KdfStream(ALG.SHA256, SEED, b"RSA", context)


def test_known_answer_1024() -> None:
    p, q = rsa_primes(1024, 65537, stream())
    assert hashlib.sha256((p * q).to_bytes(128, "big")).hexdigest() == PINNED_N_SHA256


def test_same_stream_same_primes_other_stream_other_primes() -> None:
    assert rsa_primes(1024, 65537, stream()) == rsa_primes(1024, 65537, stream())
    assert rsa_primes(1024, 65537, stream(b"other")) != rsa_primes(1024, 65537, stream())


@pytest.mark.parametrize("exponent", [3, 65537, 17])
def test_primes_fit_the_key(exponent: int) -> None:
    p, q = rsa_primes(1024, exponent, stream(exponent.to_bytes(4, "big")))
    for prime in (p, q):
        assert prime.bit_length() == 512 and gmpy2.is_prime(prime, 40)
        assert math.gcd(prime - 1, exponent) == 1
        assert prime >= 0xB5050000 << (512 - 32)
    assert (p * q).bit_length() == 1024
    assert abs(p - q) >> (512 - 100)


def test_adjusted_candidate_range() -> None:
    bits = 64
    assert adjust_candidate(0, bits) == (0xB5050000 << 32) | 1
    assert adjust_candidate((1 << bits) - 1, bits) == (1 << bits) - 1
    middle = adjust_candidate(0x80000000_12345678, bits)
    assert middle & 0xFFFFFFFF == 0x12345679 and 0xB5050000 <= middle >> 32 <= 0xFFFFFFFF


def test_search_past_the_top_draws_again() -> None:
    """A candidate whose next prime would overflow the size is dropped for the next one."""
    draws = iter([b"\xff" * 8, b"\x00" * 8])
    prime = rsa_prime(64, 65537, lambda n: next(draws))
    assert prime.bit_length() == 64 and prime >= (0xB5050000 << 32)


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError):
        rsa_prime(100, 65537, lambda n: bytes(n))


def test_primary_generation_is_deterministic() -> None:
    """generate() on a primary's KDF stream: the same seed and template give the same public key and prime."""
    template = Public.parse(rsa_storage_template(b"unique"))
    first = generate(Public.parse(template.raw), b"", stream(template.raw))
    again = generate(Public.parse(template.raw), b"", stream(template.raw))
    assert first[0].raw == again[0].raw and first[1] == again[1]
    n = int.from_bytes(first[0].area.unique, "big")
    assert n % int.from_bytes(first[1], "big") == 0
