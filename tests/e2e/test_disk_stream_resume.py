"""Disks stream sparse and resumable: holes stay holes, round trips are byte-exact, a run killed
mid-disk resumes from its last checkpoint, and no progress output reaches a pipe."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmcrypt import container
from vmcrypt.disk_stream import partial_path

MIB = 1 << 20
DISK_SIZE = 64 * MIB
DATA = [(0, 8 * MIB), (20 * MIB, 16 * MIB), (48 * MIB, 8 * MIB)]  # 32 MiB of data, 32 MiB of holes
DATA_BYTES = sum(n for _, n in DATA)
CHILD = Path(__file__).with_name("disk_child.py")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def vm(tmp_path: Path, vmcrypt_cli) -> Path:
    path = tmp_path / "vm1"
    vmcrypt_cli("vm", "create", str(path), "--disk", "64M", check=True)
    disk = path / "vm1-flat.vmdk"
    with open(disk, "r+b") as f:
        f.truncate(0)
        f.truncate(DISK_SIZE)
        for offset, length in DATA:
            f.seek(offset)
            f.write(os.urandom(length))
    return path


def _disk(vm: Path) -> Path:
    return vm / "vm1-flat.vmdk"


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def _child(home: Path, vm: Path, operation: str, fraction: float = 0, signame: str = "INT"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMCRYPT_")}
    return subprocess.run([sys.executable, str(CHILD), str(home), str(vm), operation, str(fraction), signame],
                          capture_output=True, text=True, env=env, timeout=120)


def test_holes_stay_holes_and_round_trip_is_exact(vm: Path, vmcrypt_cli) -> None:
    disk = _disk(vm)
    before, allocated = _digest(disk), _allocated(disk)
    assert allocated < DISK_SIZE * 0.6  # the fixture really is sparse
    result = vmcrypt_cli("encrypt", str(vm), "--disks", check=True)
    assert result.stderr == ""  # no bar on a pipe
    assert container.is_container(disk)
    assert _allocated(disk) <= allocated + 64 * 1024
    with open(disk, "rb") as f:  # the data moved, encrypted: no plaintext block survives
        f.seek(container.read_header(disk).header_length)
        assert f.read(MIB) != b"\0" * MIB
    vmcrypt_cli("decrypt", str(vm), check=True)
    assert not container.is_container(disk)
    assert os.path.getsize(disk) == DISK_SIZE
    assert _digest(disk) == before
    assert _allocated(disk) <= allocated + 64 * 1024


def test_rekey_keeps_holes_and_bytes(vm: Path, vmcrypt_cli) -> None:
    disk = _disk(vm)
    before = _digest(disk)
    vmcrypt_cli("encrypt", str(vm), "--disks", check=True)
    allocated = _allocated(disk)
    first = container.read_header(disk)
    vmcrypt_cli("rekey", str(vm), "--deep", check=True)
    second = container.read_header(disk)
    assert second.salt != first.salt and second.generation == first.generation + 1
    assert _allocated(disk) <= allocated + 64 * 1024
    vmcrypt_cli("rekey", str(vm), check=True)  # shallow: same DEK, ciphertext copied as is
    third = container.read_header(disk)
    assert third.salt == second.salt and third.reference != second.reference
    assert _allocated(disk) <= allocated + 64 * 1024
    vmcrypt_cli("decrypt", str(vm), check=True)
    assert _digest(disk) == before


@pytest.mark.parametrize("signame", ["INT", "KILL"])
def test_interrupted_encrypt_resumes_mid_disk(vm: Path, home: Path, signame: str) -> None:
    disk = _disk(vm)
    before = _digest(disk)
    killed = _child(home, vm, "encrypt", 0.5, signame)
    assert killed.returncode != 0
    assert not container.is_container(disk) and _digest(disk) == before  # the source is intact
    assert partial_path(disk).exists()
    journal = json.loads((vm / next(p.name for p in vm.iterdir() if "journal" in p.name)).read_text())
    assert journal["disks"]["vm1-flat.vmdk"] > 0
    resumed = _child(home, vm, "encrypt")
    assert resumed.returncode == 0, resumed.stderr
    work = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert work["resumed_from"] > 0
    assert work["transformed"] < 0.6 * DATA_BYTES
    assert container.is_container(disk) and not partial_path(disk).exists()
    done = _child(home, vm, "decrypt")
    assert done.returncode == 0, done.stderr
    assert _digest(disk) == before


def test_decrypt_after_interrupted_encrypt_discards_partial(vm: Path, home: Path) -> None:
    disk = _disk(vm)
    before = _digest(disk)
    assert _child(home, vm, "encrypt", 0.5, "KILL").returncode != 0
    rolled = _child(home, vm, "decrypt")
    assert rolled.returncode == 0, rolled.stderr
    assert not partial_path(disk).exists()
    assert _digest(disk) == before


def test_decrypt_to_a_copy_is_sparse_and_exact(vm: Path, home: Path, vmcrypt_cli, tmp_path: Path) -> None:
    """What an exact clone does with an encrypted disk: a sparse plaintext copy, the container untouched."""
    from vmcrypt.disk_stream import decrypt_disk
    from vmcrypt.keys import KeyManager
    from vmcrypt.providers.registry import ProviderRegistry

    disk = _disk(vm)
    before, allocated = _digest(disk), _allocated(disk)
    vmcrypt_cli("encrypt", str(vm), "--disks", check=True)
    encrypted = _digest(disk)
    copy = tmp_path / "copy.img"
    decrypt_disk(disk, KeyManager(ProviderRegistry(home)).header_key, destination=copy)
    assert _digest(copy) == before and _allocated(copy) <= allocated + 64 * 1024
    assert _digest(disk) == encrypted
