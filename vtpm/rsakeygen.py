"""RSA primes from a byte stream: deterministic for primaries, fast through GMP.

A primary key must come out the same from the same seed and template, in any
process and after any restart (a re-created EK is the same EK), so its primes
are a pure function of the KDFa stream it is given. Each prime is found as
in TPM 2.0 Part 1 ("RSA key generation" from a DRBG seeded by the KDF) and in
libtpms's TpmRsa_GeneratePrimeForRSA, with one difference: a candidate is
drawn from the stream, then the search goes up from it to the next prime
(gmpy2.next_prime: a sieve, then Baillie-PSW and Miller-Rabin) instead of
drawing a fresh candidate after every composite. The candidate's top 32 bits
are scaled into [0xB5050000, 0xFFFFFFFF] exactly as libtpms's
RsaAdjustPrimeCandidate does, so each prime is at least sqrt(2)/2 * 2^k and
the modulus has the full key size; it is made odd. A prime p is used only if
gcd(p - 1, e) = 1; q must differ from p in its top 100 bits (FIPS 186-4
B.3.1 (d)). The keys are therefore not byte-for-byte those libtpms derives
from the same seed (its candidates and Miller-Rabin bases come from its DRBG
in another order), but they are fixed for a given stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gmpy2

RandomBytes = Callable[[int], bytes]
SQRT_HALF_OFFSET = 0xB5050000  # sqrt(2)/2 as a 32-bit fraction, rounded up (libtpms)
SQRT_HALF_SCALE = 0x4AFB  # (0xFFFFFFFF - 0xB5050000) / 0xFFFF, the same scaling
FIPS_DISTANCE_BITS = 100


def adjust_candidate(candidate: int, bits: int) -> int:
    """Scale the top 32 bits of a ``bits``-bit candidate into [0xB5050000, 0xFFFFFFFF]; set the low bit."""
    low_bits = bits - 32
    msw = candidate >> low_bits
    adjusted = (msw >> 16) * SQRT_HALF_SCALE + (((msw & 0xFFFF) * SQRT_HALF_SCALE) >> 16) + SQRT_HALF_OFFSET
    return (adjusted << low_bits) | (candidate & ((1 << low_bits) - 1)) | 1


def rsa_prime(bits: int, exponent: int, random: RandomBytes) -> int:
    """The first prime p >= an adjusted candidate from ``random`` with gcd(p - 1, e) = 1 and ``bits`` bits."""
    if bits % 32 or bits < 64:
        raise ValueError(f"RSA prime size {bits} is not a multiple of 32 bits of at least 64")
    limit = 1 << bits
    while True:
        candidate = adjust_candidate(int.from_bytes(random(bits // 8), "big"), bits)
        prime = gmpy2.next_prime(gmpy2.mpz(candidate - 1))
        while prime < limit and math.gcd(int(prime) - 1, exponent) != 1:
            prime = gmpy2.next_prime(prime)
        if prime < limit:
            return int(prime)
        # the search ran past the top of the range: draw the next candidate


def rsa_primes(key_bits: int, exponent: int, random: RandomBytes) -> tuple[int, int]:
    """(p, q) of an RSA key of ``key_bits`` bits with public exponent ``exponent``, all drawn from ``random``."""
    half = key_bits // 2
    p = rsa_prime(half, exponent, random)
    while True:
        q = rsa_prime(half, exponent, random)
        if abs(p - q) >> (half - FIPS_DISTANCE_BITS) and (p * q).bit_length() == key_bits:
            return p, q
