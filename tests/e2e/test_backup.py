"""Backup and restore of a VM with a vTPM, through the management API and real tpm2-tools.

Inputs tried for refusal: an archive without the .nvram of a vTPM VM, an archive
whose key was destroyed at the key provider, a truncated archive, a member with a
flipped byte, an extra member, and a restore over a VM of the same name; each is
refused before anything is written.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from vmcrypt.backup import BackupError, verify_backup
from vmcrypt.inventory import ROOT, InventoryError
from vmcrypt.management import Management, PermissionDenied


@pytest.fixture
def admin(home: Path, tmp_path: Path):
    m = Management(home)
    m.bootstrap("admin", "pw")
    m.inventory.add_user("nocrypto", "pw2")
    m.inventory.grant(ROOT, "nocrypto", "No Cryptography Administrator")
    session = m.login("admin", "pw")
    session.add_datastore("ds1", tmp_path / "ds1")
    session.create_vm("ds1", "vm1")
    session.add_vtpm("vm1")
    yield session
    for record in m.inventory.vms():
        if record.power_state == "on":
            session.power_off(record.name)
    m.close()


def _tpm(session, name: str, *commands: tuple[str, ...], stdin: bytes | None = None) -> list[str]:
    record = session.power_on(name)
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={record.vtpm_port}"}
    outputs = []
    try:
        subprocess.run(["tpm2_startup", "-c"], env=env, check=True, capture_output=True)
        for command in commands:
            done = subprocess.run(command, env=env, capture_output=True, input=stdin if "-i" in command else None)
            assert done.returncode == 0, f"{command}: {done.stderr.decode()}"
            outputs.append(done.stdout.decode())
    finally:
        session.power_off(name)
    return outputs


def test_backup_delete_restore_same_tpm(admin, tmp_path: Path) -> None:
    ek_before = tmp_path / "ek-before.pem"
    _tpm(admin, "vm1", ("tpm2_nvdefine", "0x1500050", "-C", "o", "-s", "6", "-a", "ownerread|ownerwrite"),
         ("tpm2_nvwrite", "0x1500050", "-C", "o", "-i", "-"),
         ("tpm2_createek", "-c", str(tmp_path / "ek.ctx"), "-G", "rsa", "-u", str(ek_before), "-f", "pem"),
         stdin=b"BACKUP")
    # a sealed secret under the storage primary
    _tpm(admin, "vm1", ("tpm2_createprimary", "-C", "o", "-c", str(tmp_path / "prim.ctx")),
         ("tpm2_create", "-C", str(tmp_path / "prim.ctx"), "-i", "-", "-u", str(tmp_path / "seal.pub"),
          "-r", str(tmp_path / "seal.priv")), stdin=b"sealed-secret")
    archive = tmp_path / "vm1.tar"
    manifest = admin.backup("vm1", archive)
    assert manifest.vtpm and manifest.encrypted and {"vm1.vmx", "vm1.nvram"} <= {e.name for e in manifest.files}
    blob = archive.read_bytes()
    assert b"BACKUP" not in blob and b"sealed-secret" not in blob
    assert verify_backup(archive) == manifest

    admin.delete_vm("vm1")
    restored = admin.restore(archive, "ds1")
    assert restored.vtpm and restored.encrypted
    ek_after = tmp_path / "ek-after.pem"
    out = _tpm(admin, "vm1", ("tpm2_nvread", "0x1500050", "-C", "o"),
               ("tpm2_createek", "-c", str(tmp_path / "ek2.ctx"), "-G", "rsa", "-u", str(ek_after), "-f", "pem"),
               ("tpm2_createprimary", "-C", "o", "-c", str(tmp_path / "prim2.ctx")),
               ("tpm2_flushcontext", "-t"),
               ("tpm2_load", "-C", str(tmp_path / "prim2.ctx"), "-u", str(tmp_path / "seal.pub"),
                "-r", str(tmp_path / "seal.priv"), "-c", str(tmp_path / "seal.ctx")),
               ("tpm2_flushcontext", "-t"),
               ("tpm2_unseal", "-c", str(tmp_path / "seal.ctx")))
    assert out[0] == "BACKUP" and out[-1] == "sealed-secret"
    assert ek_after.read_bytes() == ek_before.read_bytes()
    with pytest.raises(InventoryError, match="already in the inventory"):
        admin.restore(archive, "ds1")


def _rewrite(archive: Path, target: Path, *, drop: str | None = None, flip: str | None = None,
             extra: str | None = None) -> None:
    with tarfile.open(archive) as src, tarfile.open(target, "w") as dst:
        for member in src.getmembers():
            if drop and member.name == drop:
                continue
            data = src.extractfile(member).read()
            if flip and member.name == flip:
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            dst.addfile(member, io.BytesIO(data))
        if extra:
            info = tarfile.TarInfo(extra)
            info.size = 1
            dst.addfile(info, io.BytesIO(b"x"))


def test_restore_refusals_write_nothing(admin, tmp_path: Path) -> None:
    archive = tmp_path / "vm1.tar"
    admin.backup("vm1", archive, include_disks=False)
    admin.delete_vm("vm1")
    datastore = tmp_path / "ds1"
    cases = {
        "no-nvram.tar": (dict(drop="vm/vm1.nvram"), "incomplete: vm1.nvram missing"),
        "flipped.tar": (dict(flip="vm/vm1.nvram"), "does not match its manifest"),
        "extra.tar": (dict(extra="vm/evil.sh"), "does not name"),
    }
    for name, (change, reason) in cases.items():
        _rewrite(archive, tmp_path / name, **change)
        with pytest.raises(BackupError, match=reason):
            admin.restore(tmp_path / name, "ds1")
        assert list(datastore.iterdir()) == []
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BackupError):
        admin.restore(truncated, "ds1")
    assert list(datastore.iterdir()) == []
    # the key destroyed at the provider: refused before writing
    manifest = verify_backup(archive)
    provider = admin.m.keys.registry.get(manifest.provider_id)
    provider.destroy_key(manifest.key_id)
    later = Management(admin.m.home).login("admin", "pw")  # another process: no key cached
    with pytest.raises(BackupError, match="key is not available"):
        later.restore(archive, "ds1")
    assert list(datastore.iterdir()) == []


def test_backup_privileges(admin, tmp_path: Path) -> None:
    nocrypto = admin.m.login("nocrypto", "pw2")
    with pytest.raises(PermissionDenied, match="Cryptographer.Access"):
        nocrypto.backup("vm1", tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.slow
def test_backup_and_restore_through_the_cli(tmp_path: Path, vmcrypt_cli) -> None:
    env = {"VMCRYPT_PASSWORD": "backup-operator-2026"}
    vmcrypt_cli("inventory", "init", "--admin", "admin", env=env, check=True)
    user = ["--user", "admin"]
    vmcrypt_cli(*user, "inventory", "datastore-add", "ds1", str(tmp_path / "ds1"), env=env, check=True)
    vmcrypt_cli(*user, "vm", "create", str(tmp_path / "ds1" / "vm1"), "--disk", "1M", env=env, check=True)
    vmcrypt_cli(*user, "vtpm", "add", str(tmp_path / "ds1" / "vm1"), env=env, check=True)
    archive = tmp_path / "vm1.tar"
    made = vmcrypt_cli(*user, "backup", "vm1", str(archive), env=env, check=True)
    assert "backed up vm1: 6 files" in made.stdout
    assert "complete and intact (6 files of VM vm1, vTPM: yes)" in vmcrypt_cli("backup", "verify", str(archive), check=True).stdout
    _rewrite(archive, tmp_path / "no-nvram.tar", drop="vm/vm1.nvram")
    vmcrypt_cli(*user, "vm", "delete", "vm1", env=env, check=True)
    refused = vmcrypt_cli(*user, "restore", str(tmp_path / "no-nvram.tar"), "--datastore", "ds1", env=env)
    assert refused.returncode == 1 and "vm1.nvram missing" in refused.stderr
    assert list((tmp_path / "ds1").iterdir()) == []
    done = vmcrypt_cli(*user, "restore", str(archive), "--datastore", "ds1", env=env, check=True)
    assert "restored vm1 into ds1" in done.stdout
    assert "vm1" in vmcrypt_cli(*user, "vm", "list", env=env, check=True).stdout
    assert "OK" in vmcrypt_cli("ca", "verify-ek", str(tmp_path / "ds1" / "vm1"), check=True).stdout
