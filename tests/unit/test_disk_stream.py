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


@pytest.mark.parametrize("data_mib", [0, 1, 16, 48, 192, 1536, 100 * 1024])
def test_checkpoints_bound_the_rework_whatever_the_disk_size(data_mib: int) -> None:
    """A run interrupted anywhere redoes at most one checkpoint interval: 1/20 of the data, or the
    64 MiB cap on a large disk; pieces shrink on a small disk so checkpoints can fall that often."""
    data, unit = data_mib << 20, container.DEFAULT_UNIT_SIZE
    steps = disk_stream.plan(data, unit, disk_stream.CHECKPOINT_BYTES)
    assert steps.piece % unit == 0 and unit <= steps.piece <= disk_stream.BUFFER_BYTES
    assert steps.every >= steps.piece  # a checkpoint falls between pieces
    if data >= 20 * disk_stream.MIN_PIECE_BYTES:
        assert steps.every <= max(data // 20, steps.piece) and steps.every <= disk_stream.CHECKPOINT_BYTES
        assert steps.every <= data * 0.05 or steps.every == disk_stream.CHECKPOINT_BYTES
    if data >= 20 * disk_stream.CHECKPOINT_BYTES:
        assert (steps.piece, steps.every) == (disk_stream.BUFFER_BYTES, disk_stream.CHECKPOINT_BYTES)
