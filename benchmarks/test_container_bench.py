"""Container write/read and VM rekey, next to plain file copy of the same bytes as the reference."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vmcrypt import container
from vmcrypt.keyref import DataKey, KeyReference
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vm import VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import encrypt_vm, rekey_vm

SIZE = 32 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "plain"
    path.write_bytes(os.urandom(SIZE))
    return path


def _key() -> DataKey:
    return DataKey(os.urandom(32), KeyReference("p", "k"))


def test_reference_atomic_copy(benchmark, source: Path, tmp_path: Path) -> None:
    benchmark.group = "container-32MiB-write"
    target = tmp_path / "copy"

    def copy() -> None:
        with open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())

    benchmark(copy)


def test_container_write(benchmark, source: Path, tmp_path: Path) -> None:
    benchmark.group = "container-32MiB-write"
    key = _key()

    def write() -> None:
        with open(source, "rb") as src:
            container.write_file(tmp_path / "enc", src, key, label="bench")

    benchmark(write)


def test_container_read(benchmark, source: Path, tmp_path: Path) -> None:
    benchmark.group = "container-32MiB-read"
    key = _key()
    with open(source, "rb") as src:
        container.write_file(tmp_path / "enc", src, key, label="bench")
    benchmark(container.decrypt_file, tmp_path / "enc", key, tmp_path / "out")
    assert (tmp_path / "out").stat().st_size == SIZE


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
def test_vm_rekey_with_64mib_disk(benchmark, tmp_path: Path, deep: bool) -> None:
    benchmark.group = "vm-rekey-64MiB-disk"
    home = create_vm(tmp_path / "vm", VmSpec(name="vm", disk_bytes=64 << 20))
    keys = KeyManager(ProviderRegistry(tmp_path / "home"))
    encrypt_vm(home, keys, include_disks=True)
    benchmark.pedantic(rekey_vm, args=(VmHome(home.vmx_path), keys), kwargs={"deep": deep}, rounds=3, iterations=1)
