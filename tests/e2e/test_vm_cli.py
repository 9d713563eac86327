"""The `vmcrypt` command line end to end, in real processes on real files.

Bad inputs tried: a flipped byte in the encrypted .nvram, a truncated
.nvram, a wrong master key file, encrypting twice, decrypting a clear VM,
rekeying a clear VM, a missing VM path, an unknown option.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support.files import snapshot
from vmcrypt import container

MARKERS = {
    "vm1.nvram": "PlatformLang".encode("utf-16-le"),
    "vmware.log": b"Log for VMware ESX",
    "vmware-1.log": b"MARKER-OLD-LOG",
    "vm1.vswp": b"MARKER-SWAP",
    "vm1-snap.vmss": b"MARKER-SUSPEND",
    "vm1-Snapshot1.vmsn": b"MARKER-SNAPSHOT-MEMORY",
    "namespacedb": b"com.vmware.guestinfo",
    "DeployPackage/payload.bin": b"MARKER-DEPLOY",
    "vm1.vmx": b"MARKER-GUESTINFO",
}


@pytest.fixture
def vm(tmp_path: Path, vmcrypt_cli) -> Path:
    """A VM with every kind of home file and a 4 MiB disk, each holding a known marker."""
    path = tmp_path / "ds" / "vm1"
    vmcrypt_cli("vm", "create", str(path), "--disk", "4M", check=True)
    (path / "vmware-1.log").write_bytes(b"older log MARKER-OLD-LOG\n" * 20)
    (path / "vm1.vswp").write_bytes(b"MARKER-SWAP" + os.urandom(100000))
    (path / "vm1-snap.vmss").write_bytes(b"MARKER-SUSPEND" * 300)
    (path / "vm1-Snapshot1.vmsn").write_bytes(b"MARKER-SNAPSHOT-MEMORY" * 100)
    (path / "DeployPackage").mkdir()
    (path / "DeployPackage" / "payload.bin").write_bytes(b"MARKER-DEPLOY" * 10)
    with open(path / "vm1.vmx", "a") as vmx:
        vmx.write('guestinfo.secret = "MARKER-GUESTINFO"\n')
    with open(path / "vm1-flat.vmdk", "r+b") as disk:
        disk.seek(1 << 20)
        disk.write(b"MARKER-DISK" * 10)
    return path


def test_round_trip_every_home_file_and_disk(vm: Path, vmcrypt_cli) -> None:
    original = snapshot(vm)
    result = vmcrypt_cli("encrypt", str(vm), "--disks", "--json", check=True)
    report = json.loads(result.stdout)
    assert set(report["changed"]) == set(MARKERS) - {"vm1.vmx"} | {"vm1-flat.vmdk"}

    for name, marker in MARKERS.items():
        assert marker not in (vm / name).read_bytes(), f"{name} still shows {marker!r}"
    assert b"MARKER-DISK" not in (vm / "vm1-flat.vmdk").read_bytes()
    vmx = (vm / "vm1.vmx").read_text()
    assert 'displayName = "vm1"' in vmx and "encryption.keySafe" in vmx and "encryption.data" in vmx
    assert (vm / "vm1.vmdk").read_bytes() == original["vm1.vmdk"]  # descriptors stay clear

    described = json.loads(vmcrypt_cli("describe", str(vm / "vm1.vmx"), "--json", check=True).stdout)
    assert described["encrypted"] and described["cipher"] == "AES-XTS-256"
    assert described["key_provider"]["name"] == "native"
    assert described["key_id"] == report["key_id"]
    assert described["key_provider"]["id"] == report["key_provider_id"]
    assert all(f["encrypted"] and f["matches_key_safe"] for f in described["files"])
    text = vmcrypt_cli("describe", str(vm / "vm1.vmx"), check=True).stdout
    assert "native" in text and report["key_id"] in text and "AES-XTS-256" in text

    vmcrypt_cli("decrypt", str(vm), check=True)
    assert snapshot(vm) == original


def test_disks_stay_clear_without_flag(vm: Path, vmcrypt_cli) -> None:
    vmcrypt_cli("encrypt", str(vm), check=True)
    assert not container.is_container(vm / "vm1-flat.vmdk")
    assert container.is_container(vm / "vm1.nvram")
    again = vmcrypt_cli("encrypt", str(vm))
    assert again.returncode == 1 and "already encrypted" in again.stderr
    vmcrypt_cli("encrypt", str(vm), "--disks", check=True)  # adds the disk under the same key
    assert container.read_header(vm / "vm1-flat.vmdk").reference == container.read_header(vm / "vm1.nvram").reference


def test_flipped_byte_in_nvram(vm: Path, vmcrypt_cli) -> None:
    vmcrypt_cli("encrypt", str(vm), check=True)
    nvram = vm / "vm1.nvram"
    blob = bytearray(nvram.read_bytes())
    blob[len(blob) // 2] ^= 0x20
    nvram.write_bytes(bytes(blob))
    before = snapshot(vm)
    result = vmcrypt_cli("decrypt", str(vm))
    assert result.returncode == 1
    assert str(nvram) in result.stderr and "integrity check failed" in result.stderr
    assert result.stderr.startswith("error: decrypt")
    assert snapshot(vm) == before


def test_truncated_nvram(vm: Path, vmcrypt_cli) -> None:
    vmcrypt_cli("encrypt", str(vm), check=True)
    nvram = vm / "vm1.nvram"
    nvram.write_bytes(nvram.read_bytes()[:-100])
    before = snapshot(vm)
    result = vmcrypt_cli("decrypt", str(vm))
    assert result.returncode == 1 and str(nvram) in result.stderr and "truncated" in result.stderr
    assert snapshot(vm) == before


def test_wrong_master_key(vm: Path, home: Path, vmcrypt_cli) -> None:
    vmcrypt_cli("encrypt", str(vm), check=True)
    (master,) = home.glob("native/*/master.key")
    master.write_bytes(os.urandom(32))
    before = snapshot(vm)
    result = vmcrypt_cli("decrypt", str(vm))
    assert result.returncode == 1 and "wrong master key" in result.stderr and "keystore.vmc" in result.stderr
    assert snapshot(vm) == before
    assert vmcrypt_cli("rekey", str(vm)).returncode == 1
    assert snapshot(vm) == before


def test_shallow_and_deep_rekey(vm: Path, vmcrypt_cli) -> None:
    original = snapshot(vm)
    first = json.loads(vmcrypt_cli("encrypt", str(vm), "--disks", "--json", check=True).stdout)
    nvram = vm / "vm1.nvram"
    header = container.read_header(nvram)
    body = nvram.read_bytes()[header.header_length :]

    shallow = json.loads(vmcrypt_cli("rekey", str(vm), "--json", check=True).stdout)
    assert shallow["key_id"] != first["key_id"]
    new_header = container.read_header(nvram)
    assert new_header.reference.key_id == shallow["key_id"]
    assert nvram.read_bytes()[new_header.header_length : -32] == body[:-32]  # same ciphertext, new MAC

    deep = json.loads(vmcrypt_cli("rekey", str(vm), "--deep", "--json", check=True).stdout)
    assert deep["key_id"] not in (first["key_id"], shallow["key_id"])
    deep_header = container.read_header(nvram)
    assert nvram.read_bytes()[deep_header.header_length : -32] != body[:-32]
    described = json.loads(vmcrypt_cli("describe", str(vm), "--json", check=True).stdout)
    assert described["key_id"] == deep["key_id"]
    assert all(f["matches_key_safe"] for f in described["files"])

    vmcrypt_cli("decrypt", str(vm), check=True)
    assert snapshot(vm) == original


def test_refusals_and_usage(vm: Path, tmp_path: Path, vmcrypt_cli) -> None:
    result = vmcrypt_cli("decrypt", str(vm))
    assert result.returncode == 1 and "not encrypted" in result.stderr
    assert vmcrypt_cli("rekey", str(vm)).returncode == 1
    missing = vmcrypt_cli("describe", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "nope" in missing.stderr
    assert vmcrypt_cli("encrypt", str(vm), "--bogus").returncode == 2
    assert vmcrypt_cli().returncode == 2
    exists = vmcrypt_cli("vm", "create", str(vm))
    assert exists.returncode == 1 and "not empty" in exists.stderr


@pytest.mark.parametrize(
    "command", [[], ["vm", "create"], ["encrypt"], ["decrypt"], ["rekey"], ["describe"], ["provider", "list"]]
)
def test_help(command: list[str], vmcrypt_cli) -> None:
    result = vmcrypt_cli(*command, "--help")
    assert result.returncode == 0 and "usage: vmcrypt" in result.stdout


@pytest.mark.slow
def test_provider_commands(tmp_path: Path, vmcrypt_cli) -> None:
    listed = json.loads(vmcrypt_cli("provider", "list", "--json", check=True).stdout)
    assert [(p["name"], p["kind"], p["default"]) for p in listed] == [("native", "native", True)]
    vm = tmp_path / "v"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    key_id = json.loads(vmcrypt_cli("encrypt", str(vm), "--json", check=True).stdout)["key_id"]
    keys = json.loads(vmcrypt_cli("provider", "keys", "--json", check=True).stdout)
    assert [k["key_id"] for k in keys] == [key_id]
    backup = tmp_path / "backup.vmc"
    env = {"VMCRYPT_BACKUP_PASSPHRASE": "a long backup passphrase"}
    out = json.loads(vmcrypt_cli("provider", "export", str(backup), "--json", env=env, check=True).stdout)
    assert out["keys"] == 1
    no_pass = vmcrypt_cli("provider", "export", str(tmp_path / "b2"))
    assert no_pass.returncode == 1 and "passphrase" in no_pass.stderr
    imported = json.loads(vmcrypt_cli("provider", "import", str(backup), "--json", env=env, check=True).stdout)
    assert imported["added"] == 0
