"""Container format: round trips, header, and every way a file can be bad.

Bad inputs tried: wrong DEK; a flipped bit in every region (magic, version,
header fields, label, key reference, salt, key check, ciphertext, MAC);
truncation at 0, 1, 8, inside the header, inside the data, before the MAC,
one byte short; an appended byte; an unknown format version and cipher; a
plain file; a header length pointing past the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcrypt import container
from vmcrypt.container import Mac
from vmcrypt.errors import (
    ContainerError,
    CorruptError,
    IntegrityError,
    NotEncryptedError,
    TruncatedError,
    UnsupportedFormatError,
    WrongKeyError,
)
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm


def make_key(key_id: str = "kek-1") -> DataKey:
    return DataKey(os.urandom(32), KeyReference("provider-1", key_id, WrapAlgorithm.AES_KW, os.urandom(40)))


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=20000), unit_size=st.sampled_from([512, 4096, 65536]))
def test_round_trip_in_memory(data: bytes, unit_size: int) -> None:
    key = make_key()
    blob = container.encrypt_bytes(data, key, label="test", unit_size=unit_size)
    header = container.parse_header(blob)
    assert header.plaintext_length == len(data)
    assert header.unit_size == unit_size
    assert header.reference == key.reference
    assert header.label == "test"
    assert len(blob) == header.file_length
    assert container.decrypt_bytes(blob, key) == data


def test_header_fields_and_ciphertext_hides_plaintext(tmp_path: Path) -> None:
    key = make_key()
    path = tmp_path / "f"
    plaintext = b"SECRET-MARKER " * 1000
    header = container.write_file(path, plaintext, key, label="nvram:f")
    raw = path.read_bytes()
    assert raw.startswith(container.MAGIC)
    assert b"SECRET-MARKER" not in raw
    assert header.cipher == container.Cipher.AES_XTS_256 and header.mac == Mac.HMAC_SHA256
    assert container.read_header(path) == header
    assert container.read_file(path, key) == plaintext
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_generation_counts_rewrites_and_salt_changes(tmp_path: Path) -> None:
    key = make_key()
    path = tmp_path / "f"
    first = container.write_file(path, b"a" * 100, key, label="x")
    second = container.write_file(path, b"a" * 100, key, label="x")
    assert (first.generation, second.generation) == (1, 2)
    assert first.salt != second.salt  # a rewrite never reuses the XTS key


def test_streaming_file_larger_than_chunk_with_progress(tmp_path: Path) -> None:
    key = make_key()
    source = tmp_path / "plain"
    source.write_bytes(os.urandom(3 * container.CHUNK_UNITS_BYTES + 12345))
    seen: list[tuple[int, int]] = []
    with open(source, "rb") as src:
        container.write_file(tmp_path / "enc", src, key, label="big", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (source.stat().st_size, source.stat().st_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    container.decrypt_file(tmp_path / "enc", key, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == source.read_bytes()


def test_decrypt_in_place_and_key_resolver(tmp_path: Path) -> None:
    key = make_key()
    path = tmp_path / "f"
    path.write_bytes(b"hello world" * 50)
    container.encrypt_file_in_place(path, key, label="f")
    assert container.is_container(path)
    asked: list[KeyReference] = []

    def resolver(header: container.ContainerHeader) -> bytes:
        asked.append(header.reference)
        return key.dek

    container.decrypt_file(path, resolver)
    assert path.read_bytes() == b"hello world" * 50
    assert asked == [key.reference]


def test_wrong_key_names_file_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "vm.nvram"
    container.write_file(path, b"x" * 5000, make_key(), label="nvram")
    before = path.read_bytes()
    with pytest.raises(WrongKeyError) as info:
        container.decrypt_file(path, make_key())
    assert str(path) in str(info.value) and "wrong key" in str(info.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["vm.nvram"]


def _regions(blob: bytes, header: container.ContainerHeader) -> dict[str, int]:
    return {
        "magic": 0,
        "version": 9,
        "cipher": 14,
        "unit_size": 18,
        "plaintext_length": 36,
        "salt": 40,
        "key_check": 72,
        "label": 90,
        "key_reference": header.header_length - 5,
        "ciphertext_first": header.header_length,
        "ciphertext_last": header.header_length + header.ciphertext_length - 1,
        "mac": len(blob) - 1,
    }


@pytest.mark.parametrize(
    "region",
    ["magic", "version", "cipher", "unit_size", "plaintext_length", "salt", "key_check", "label",
     "key_reference", "ciphertext_first", "ciphertext_last", "mac"],
)
def test_flipped_bit_anywhere_is_refused(tmp_path: Path, region: str) -> None:
    key = make_key()
    path = tmp_path / "f.vmss"
    container.write_file(path, os.urandom(10000), key, label="suspend")
    blob = bytearray(path.read_bytes())
    offset = _regions(bytes(blob), container.parse_header(bytes(blob)))[region]
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ContainerError) as info:
        container.decrypt_file(path, key)
    assert str(path) in str(info.value)
    assert path.read_bytes() == bytes(blob)
    assert not any(p.name.startswith(".vmcrypt-tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("keep", [0, 1, 8, 20, 100, 200, 5000, -32, -1])
def test_truncation_is_refused(tmp_path: Path, keep: int) -> None:
    key = make_key()
    path = tmp_path / "f.log"
    container.write_file(path, os.urandom(9000), key, label="log")
    blob = path.read_bytes()
    cut = blob[:keep] if keep >= 0 else blob[:keep]
    path.write_bytes(cut)
    with pytest.raises((TruncatedError, CorruptError)) as info:
        container.decrypt_file(path, key)
    assert str(path) in str(info.value)
    assert path.read_bytes() == cut


def test_appended_bytes_are_refused(tmp_path: Path) -> None:
    key = make_key()
    path = tmp_path / "f"
    container.write_file(path, b"abc" * 100, key, label="x")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(CorruptError, match="unexpected bytes"):
        container.read_file(path, key)


def test_unknown_version_and_cipher(tmp_path: Path) -> None:
    key = make_key()
    blob = bytearray(container.encrypt_bytes(b"data" * 10, key, label="x"))
    newer = bytearray(blob)
    newer[9] = 99
    with pytest.raises(UnsupportedFormatError, match="version 99"):
        container.decrypt_bytes(bytes(newer), key, name="f")
    other_cipher = bytearray(blob)
    other_cipher[15] = 7
    with pytest.raises(UnsupportedFormatError):
        container.decrypt_bytes(bytes(other_cipher), key)


def test_plain_file_is_not_a_container(tmp_path: Path) -> None:
    path = tmp_path / "plain.log"
    path.write_bytes(b"2026-01-01 log line\n")
    assert not container.is_container(path)
    with pytest.raises(NotEncryptedError):
        container.read_header(path)


def test_header_length_past_end(tmp_path: Path) -> None:
    blob = bytearray(container.encrypt_bytes(b"x", make_key(), label="x"))
    blob[10:14] = (100000).to_bytes(4, "big")
    with pytest.raises(TruncatedError):
        container.parse_header(bytes(blob))


def test_disk_layout_has_aligned_header_and_no_mac(tmp_path: Path) -> None:
    key = make_key()
    path = tmp_path / "d-flat.vmdk"
    data = os.urandom(64 * 1024)
    header = container.write_file(path, data, key, label="disk", mac=Mac.NONE, header_align=4096)
    assert header.header_length == 4096
    assert path.stat().st_size == 4096 + len(data)
    # unit n of the disk sits at 4096 + n*4096 and decrypts alone: random access
    keys = container._open_keys(key, header, path)
    raw = path.read_bytes()
    assert keys.xts.decrypt_units(5, raw[4096 + 5 * 4096 : 4096 + 6 * 4096]) == data[5 * 4096 : 6 * 4096]
    container.decrypt_file(path, key)
    assert path.read_bytes() == data


@pytest.mark.parametrize("mac", [Mac.HMAC_SHA256, Mac.NONE])
def test_recrypt_shallow_keeps_ciphertext_deep_changes_it(tmp_path: Path, mac: Mac) -> None:
    old = make_key("old")
    path = tmp_path / "f"
    data = os.urandom(300000)
    align = 4096 if mac == Mac.NONE else 0
    first = container.write_file(path, data, old, label="x", mac=mac, header_align=align)
    body = path.read_bytes()[first.header_length : first.header_length + first.ciphertext_length]

    shallow = DataKey(old.dek, KeyReference("provider-2", "new-kek", WrapAlgorithm.AES_KW, b"w" * 40))
    second = container.recrypt_file(path, old, shallow)
    raw = path.read_bytes()
    assert second.reference == shallow.reference and second.generation == 2
    assert raw[second.header_length : second.header_length + second.ciphertext_length] == body
    assert container.read_header(path).reference == shallow.reference
    with pytest.raises(WrongKeyError):
        container.recrypt_file(path, make_key(), shallow)

    deep = make_key("deep")
    third = container.recrypt_file(path, shallow, deep)
    raw = path.read_bytes()
    assert raw[third.header_length : third.header_length + third.ciphertext_length] != body
    with pytest.raises(WrongKeyError):
        container.decrypt_bytes(raw, old)
    assert container.decrypt_bytes(raw, deep) == data


def test_recrypt_refuses_tampered_source(tmp_path: Path) -> None:
    key = make_key()
    path = tmp_path / "f"
    container.write_file(path, os.urandom(10000), key, label="x")
    blob = bytearray(path.read_bytes())
    blob[500] ^= 0x80
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError):
        container.recrypt_file(path, key, make_key())
    assert path.read_bytes() == bytes(blob)


def test_label_is_authenticated(tmp_path: Path) -> None:
    key = make_key()
    blob = container.encrypt_bytes(b"payload", key, label="nvram:a.nvram")
    header = container.parse_header(blob)
    forged = header.encode()  # same length label swapped below
    assert b"nvram:a.nvram" in forged
    tampered = blob.replace(b"nvram:a.nvram", b"nvram:b.nvram", 1)
    with pytest.raises(IntegrityError):
        container.decrypt_bytes(tampered, key)


def test_encrypt_stream_detects_short_source() -> None:
    with pytest.raises(CorruptError, match="source ended"):
        container.encrypt_stream(io.BytesIO(b"abc"), io.BytesIO(), make_key(), label="x", plaintext_length=10)
