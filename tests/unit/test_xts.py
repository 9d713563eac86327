"""AES-XTS-256 engine: IEEE 1619 vector, agreement with `cryptography`, bad input.

Inputs tried for rejection: keys of 0, 32, 63, 65 bytes; equal key halves;
unit sizes 0, 15, 2^24+1; last units of 1 and 15 bytes; negative and
2^64-overflowing unit indices.
"""

from __future__ import annotations

import os
import threading

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcrypt import xts
from vmcrypt.xts import XtsCipher, XtsKeyError, decrypt_units, encrypt_units

# IEEE Std 1619-2007, Annex B, vector 10: XTS-AES-256, data unit 0xff, 512 bytes.
IEEE_V10_KEY = bytes.fromhex(
    "2718281828459045235360287471352662497757247093699959574966967627"
    "3141592653589793238462643383279502884197169399375105820974944592"
)
IEEE_V10_PT = bytes(range(256)) * 2
IEEE_V10_CT = bytes.fromhex(
    "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44"
    "680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
    "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7d"
    "e8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
    "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6"
    "dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
    "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae9be69a2ffeceb1bec9de244fbe15992b"
    "11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
    "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493"
    "c27b3429eaedb4ed5376441a77ed43851ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
    "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151"
)

BACKENDS = ["cryptography"] + (["openssl"] if xts.BACKEND == "openssl" else [])


def reference_xts(key: bytes, first_unit: int, data: bytes, unit_size: int, encrypt: bool = True) -> bytes:
    """One `cryptography` XTS operation per unit: the independent reference."""
    out = b""
    for i in range(0, len(data), unit_size):
        cipher = Cipher(algorithms.AES(key), modes.XTS((first_unit + i // unit_size).to_bytes(16, "little")))
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        out += ctx.update(data[i : i + unit_size]) + ctx.finalize()
    return out


def test_extension_is_built() -> None:
    # The install builds the OpenSSL extension; the slow fallback must not go unnoticed.
    assert xts.BACKEND == "openssl"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ieee1619_vector_10(backend: str) -> None:
    cipher = XtsCipher(IEEE_V10_KEY, backend=backend)
    assert cipher.encrypt_units(0xFF, IEEE_V10_PT, unit_size=512) == IEEE_V10_CT
    assert cipher.decrypt_units(0xFF, IEEE_V10_CT, unit_size=512) == IEEE_V10_PT


@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_10_as_second_unit_of_a_run(backend: str) -> None:
    # unit 0xfe then unit 0xff: the second 512 bytes must equal the standalone vector
    run = XtsCipher(IEEE_V10_KEY, backend=backend).encrypt_units(0xFE, IEEE_V10_PT * 2, unit_size=512)
    assert run[512:] == IEEE_V10_CT
    assert run[:512] != IEEE_V10_CT


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=64, max_size=64).filter(lambda k: k[:32] != k[32:]),
    first_unit=st.integers(min_value=0, max_value=2**64 - 1000),
    unit_size=st.sampled_from([16, 32, 512, 520, 4096]),
    data=st.binary(min_size=0, max_size=9000),
)
def test_matches_cryptography(backend: str, key: bytes, first_unit: int, unit_size: int, data: bytes) -> None:
    tail = len(data) % unit_size
    if tail and tail < 16:
        data = data[: len(data) - tail]
    cipher = XtsCipher(key, backend=backend)
    ciphertext = cipher.encrypt_units(first_unit, data, unit_size)
    assert ciphertext == reference_xts(key, first_unit, data, unit_size)
    assert cipher.decrypt_units(first_unit, ciphertext, unit_size) == data


def test_large_run_releases_gil_and_stays_correct_under_threads() -> None:
    key = os.urandom(64)
    cipher = XtsCipher(key)
    data = os.urandom(1 << 20)
    expected = reference_xts(key, 7, data, 4096)
    results: list[bytes] = []

    def work() -> None:
        for _ in range(4):
            results.append(cipher.encrypt_units(7, data))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and all(r == expected for r in results)


def test_same_plaintext_differs_per_unit() -> None:
    ciphertext = encrypt_units(os.urandom(64), 0, bytes(4096 * 4))
    units = {ciphertext[i : i + 4096] for i in range(0, len(ciphertext), 4096)}
    assert len(units) == 4


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_rejects_wrong_key_size(size: int) -> None:
    with pytest.raises(XtsKeyError, match="64-byte key"):
        XtsCipher(os.urandom(size))


def test_rejects_equal_key_halves() -> None:
    half = os.urandom(32)
    with pytest.raises(XtsKeyError, match="halves must differ"):
        XtsCipher(half + half)


@pytest.mark.parametrize("unit_size", [0, 15, 2**24 + 1])
def test_rejects_bad_unit_size(unit_size: int) -> None:
    with pytest.raises(ValueError, match="data unit size"):
        encrypt_units(os.urandom(64), 0, bytes(64), unit_size)


@pytest.mark.parametrize("length", [1, 15, 4096 + 15])
def test_rejects_short_last_unit(length: int) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        decrypt_units(os.urandom(64), 0, bytes(length))


def test_rejects_bad_unit_index() -> None:
    key = os.urandom(64)
    with pytest.raises(ValueError, match="negative"):
        encrypt_units(key, -1, bytes(16))
    with pytest.raises(OverflowError):
        encrypt_units(key, 2**64 - 1, bytes(32), 16)
    assert len(encrypt_units(key, 2**64 - 1, bytes(16), 16)) == 16


def test_repr_hides_key() -> None:
    key = bytes(range(64))
    assert key.hex() not in repr(XtsCipher(key)) and "hidden" in repr(XtsCipher(key))
