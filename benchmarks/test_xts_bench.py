"""XTS engine throughput by call size, next to a per-unit `cryptography` reference in the same run.

Groups put both side by side; compare the `mean` columns for the ratio.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vmcrypt.xts import XtsCipher

SIZES = {"512B": 512, "4KiB": 4096, "64KiB": 64 << 10, "1MiB": 1 << 20}


def reference(key: bytes, data: bytes, unit: int) -> bytes:
    """What a straightforward Python implementation does: one cipher per data unit."""
    algorithm = algorithms.AES(key)
    out = []
    for i in range(0, len(data), unit):
        enc = Cipher(algorithm, modes.XTS((i // unit).to_bytes(16, "little"))).encryptor()
        out.append(enc.update(data[i : i + unit]) + enc.finalize())
    return b"".join(out)


@pytest.mark.parametrize("size", list(SIZES))
def test_vmcrypt_xts(benchmark, size: str) -> None:
    n = SIZES[size]
    unit = min(n, 4096)
    cipher = XtsCipher(os.urandom(64))
    data = os.urandom(n)
    benchmark.group = f"xts-{size}"
    benchmark.extra_info["bytes"] = n
    result = benchmark(cipher.encrypt_units, 0, data, unit)
    assert len(result) == n


@pytest.mark.parametrize("size", list(SIZES))
def test_reference_cryptography_per_unit(benchmark, size: str) -> None:
    n = SIZES[size]
    unit = min(n, 4096)
    key = os.urandom(64)
    data = os.urandom(n)
    benchmark.group = f"xts-{size}"
    benchmark.extra_info["bytes"] = n
    result = benchmark(reference, key, data, unit)
    assert result == XtsCipher(key).encrypt_units(0, data, unit)


@pytest.mark.parametrize("unit", [512, 4096, 65536, 1 << 20])
def test_vmcrypt_xts_unit_sizes_over_4mib(benchmark, unit: int) -> None:
    cipher = XtsCipher(os.urandom(64))
    data = os.urandom(4 << 20)
    benchmark.group = "xts-4MiB-by-unit-size"
    benchmark(cipher.encrypt_units, 0, data, unit)
