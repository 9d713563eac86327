"""Disk stream edge cases, in-process on real sparse files: lengths that end inside a data unit
(a hole at the tail still decrypts to zeros) and a round trip through encrypt, deep rekey, decrypt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmcrypt import container, disk_stream
from vmcrypt.keyref import DataKey, KeyReference


def _key(name: str) -> DataKey:
    return DataKey(os.urandom(32), KeyReference("unit", name, wrapped_dek=os.urandom(40)))


@pytest.mark.parametrize("size", [100, (1 << 20) + 21, (1 << 20) + 4095, 2 << 20])
def test_round_trip_with_a_hole_at_the_tail(tmp_path: Path, size: int) -> None:
    disk = tmp_path / "d.img"
    with open(disk, "wb") as f:
        f.truncate(size)
        f.write(os.urandom(min(size, 64 * 1024)))
    want = disk.read_bytes()
    first, second = _key("a"), _key("b")
    disk_stream.encrypt_disk(disk, first, label="disk:d")
    assert container.read_header(disk).plaintext_length == size
    disk_stream.recrypt_disk(disk, first, second)
    disk_stream.decrypt_disk(disk, second)
    assert disk.read_bytes() == want
    assert not disk_stream.partial_path(disk).exists()


def test_wrong_key_leaves_the_disk_and_no_partial(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(os.urandom(8192))
    key = _key("a")
    disk_stream.encrypt_disk(disk, key, label="disk:d")
    before = disk.read_bytes()
    with pytest.raises(container.WrongKeyError):
        disk_stream.decrypt_disk(disk, _key("other"))
    assert disk.read_bytes() == before and not disk_stream.partial_path(disk).exists()
