"""File-system failures during encryption, on pyfakefs (a disk cannot be made full for real here).

Inputs tried: a disk that fills up while the home files are encrypted (at
several capacities, so the failure lands on different files), a VM
directory that is read-only, a key-store directory that is read-only.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from pyfakefs.helpers import reset_ids, set_uid

from vmcrypt import container
from vmcrypt.errors import VmcryptError
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vm import VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import decrypt_vm, encrypt_vm


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def _vm(fs, swap_bytes: int = 200_000) -> tuple[VmHome, KeyManager]:
    home = create_vm("/datastore/vm", VmSpec(name="vm"))
    Path("/datastore/vm/vm.vswp").write_bytes(os.urandom(swap_bytes))
    Path("/datastore/vm/vm.vmss").write_bytes(b"suspend" * 20000)
    keys = KeyManager(ProviderRegistry("/mgmt"))
    keys.registry.default()
    return home, keys


@pytest.mark.parametrize("headroom", [5_000, 150_000, 260_000, 330_000])
def test_disk_full_during_encrypt(fs, headroom: int) -> None:
    home, keys = _vm(fs)
    original = _contents(home.directory)
    used = fs.get_disk_usage("/").used
    fs.set_disk_usage(used + headroom)

    with pytest.raises(OSError) as info:
        encrypt_vm(home, keys)
    assert info.value.errno == errno.ENOSPC
    assert any("left as it was" in note for note in getattr(info.value, "__notes__", [])), info.getrepr()

    # Nothing lost: every file is its original self, or (if even the roll-back ran out of
    # space) an intact container of it that a later decrypt restores.
    fs.set_disk_usage(used + 50_000_000)
    for name, data in original.items():
        path = home.directory / name
        if container.is_container(path):
            assert container.read_file(path, keys.header_key) == data
        else:
            assert path.read_bytes() == data
    if home.journal_path.exists():
        decrypt_vm(home, keys)
    assert _contents(home.directory) == original
    assert not any(p.name.startswith(".vmcrypt-tmp") for p in home.directory.iterdir())


def test_read_only_vm_directory(fs) -> None:
    set_uid(1000)  # permission checks apply to non-root users only
    home, keys = _vm(fs)
    original = _contents(home.directory)
    os.chmod(home.directory, 0o555)
    try:
        with pytest.raises(PermissionError) as info:
            encrypt_vm(home, keys)
        assert "/datastore/vm" in str(info.value)
    finally:
        reset_ids()
    assert _contents(home.directory) == original


def test_read_only_key_store(fs) -> None:
    set_uid(1000)
    home, keys = _vm(fs)
    original = _contents(home.directory)
    provider_dir = keys.provider().directory
    os.chmod(provider_dir, 0o500)
    try:
        with pytest.raises((PermissionError, VmcryptError)):
            encrypt_vm(home, keys)
    finally:
        reset_ids()
    assert _contents(home.directory) == original
    assert not home.journal_path.exists()
