"""Disaster recovery: the management home is lost; a new one on the same KMIP cluster gets the VM back.

Real pykmip-server, real vTPM processes, real tpm2-tools. Also tried: a home that
is not connected to the VM's key provider must refuse to register it, with the
VM's files unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.files import snapshot
from support.kmip_server import make_pki, start_server
from vmcrypt.errors import KeyProviderError
from vmcrypt.management import Management

pytestmark = pytest.mark.slow  # each test runs pykmip-server, vTPM processes and tpm2-tools: 5-20 s


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory):
    pki = make_pki(tmp_path_factory.mktemp("dr-pki"))
    server = start_server(tmp_path_factory.mktemp("dr-kmip"), pki)
    yield pki, server
    server.stop()


def _home(path: Path, pki, server, provider_id: str | None = None) -> tuple[Management, str]:
    management = Management(path)
    provider = management.keys.registry.add_kmip("corp-kms", [server.address], pki.ca, pki.client_cert,
                                                 pki.client_key, make_default=True, provider_id=provider_id)
    management.bootstrap("admin", "pw")
    return management, provider.provider_id


def _tools(port: int, *args: str, stdin: bytes | None = None) -> str:
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}"}
    done = subprocess.run(args, env=env, input=stdin, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_new_home_same_kms_same_vtpm(tmp_path: Path, kms) -> None:
    pki, server = kms
    datastore = tmp_path / "ds1"
    first, provider_id = _home(tmp_path / "home-a", pki, server)
    admin = first.login("admin", "pw")
    admin.add_datastore("ds1", datastore)
    admin.create_vm("ds1", "vm1")
    record = admin.add_vtpm("vm1")
    assert record.provider_id == provider_id
    on = admin.power_on("vm1")
    _tools(on.vtpm_port, "tpm2_startup", "-c")
    _tools(on.vtpm_port, "tpm2_nvdefine", "0x1500060", "-C", "o", "-s", "2", "-a", "ownerread|ownerwrite")
    _tools(on.vtpm_port, "tpm2_nvwrite", "0x1500060", "-C", "o", "-i", "-", stdin=b"DR")
    _tools(on.vtpm_port, "tpm2_createek", "-c", str(tmp_path / "ek.ctx"), "-G", "ecc", "-u", str(tmp_path / "ek-a.pem"), "-f", "pem")
    admin.power_off("vm1")
    first.close()
    shutil.rmtree(tmp_path / "home-a")  # the management plane is gone; the datastore and the KMS remain

    # a home that does not know the VM's key provider cannot take the VM
    stranger = Management(tmp_path / "home-x")
    stranger.bootstrap("admin", "pw")
    outsider = stranger.login("admin", "pw")
    outsider.add_datastore("ds1", datastore)
    before = snapshot(datastore)
    with pytest.raises(KeyProviderError, match=f"no key provider '{provider_id}'"):
        outsider.register_vm(datastore / "vm1" / "vm1.vmx", "ds1")
    assert snapshot(datastore) == before and stranger.inventory.vms() == []

    second, same_id = _home(tmp_path / "home-b", pki, server, provider_id=provider_id)
    assert same_id == provider_id
    admin = second.login("admin", "pw")
    admin.add_datastore("ds1", datastore)
    restored = admin.register_vm(datastore / "vm1" / "vm1.vmx", "ds1")
    assert restored.vtpm and restored.encrypted
    on = admin.power_on("vm1")
    _tools(on.vtpm_port, "tpm2_startup", "-c")
    out = tmp_path / "nv"
    _tools(on.vtpm_port, "tpm2_nvread", "0x1500060", "-C", "o", "-o", str(out))
    _tools(on.vtpm_port, "tpm2_createek", "-c", str(tmp_path / "ek2.ctx"), "-G", "ecc", "-u", str(tmp_path / "ek-b.pem"), "-f", "pem")
    admin.power_off("vm1")
    assert out.read_bytes() == b"DR"
    assert (tmp_path / "ek-b.pem").read_bytes() == (tmp_path / "ek-a.pem").read_bytes()

    # rekeying on the KMS works as with the native provider; the vTPM keeps its contents
    old_key = admin.vm("vm1").key_id
    rekeyed = admin.rekey("vm1")
    assert rekeyed.key_id != old_key and rekeyed.provider_id == provider_id
    on = admin.power_on("vm1")
    _tools(on.vtpm_port, "tpm2_startup", "-c")
    _tools(on.vtpm_port, "tpm2_nvread", "0x1500060", "-C", "o", "-o", str(out))
    admin.power_off("vm1")
    assert out.read_bytes() == b"DR"

    # a backup whose key is then destroyed on the KMS cannot be restored, and nothing is written
    archive = tmp_path / "vm1.tar"
    admin.backup("vm1", archive)
    assert admin.vm("vm1").key_id == rekeyed.key_id
    admin.delete_vm("vm1", destroy_key=True)  # revoked and destroyed on the KMS
    later = Management(tmp_path / "home-b").login("admin", "pw")  # a new process: nothing cached
    from vmcrypt.backup import BackupError

    with pytest.raises(BackupError, match="key is not available"):
        later.restore(archive, "ds1")
    assert list(datastore.iterdir()) == []
    second.close()


def test_cold_migration_to_another_home(tmp_path: Path, kms, vmcrypt_cli) -> None:
    """Through the CLI: refused while powered on and towards a home without the KMS; then moved and working."""
    from vmcrypt.errors import VmError

    pki, server = kms
    source, provider_id = _home(tmp_path / "home-a", pki, server)
    admin = source.login("admin", "pw")
    admin.add_datastore("ds1", tmp_path / "ds1")
    admin.create_vm("ds1", "vm1")
    admin.add_vtpm("vm1")
    on = admin.power_on("vm1")
    _tools(on.vtpm_port, "tpm2_startup", "-c")
    _tools(on.vtpm_port, "tpm2_nvdefine", "0x1500061", "-C", "o", "-s", "3", "-a", "ownerread|ownerwrite")
    _tools(on.vtpm_port, "tpm2_nvwrite", "0x1500061", "-C", "o", "-i", "-", stdin=b"MIG")

    target, _ = _home(tmp_path / "home-b", pki, server, provider_id=provider_id)
    target.login("admin", "pw").add_datastore("ds2", tmp_path / "ds2")
    lonely = Management(tmp_path / "home-c")
    lonely.bootstrap("admin", "pw")
    lonely.login("admin", "pw").add_datastore("ds3", tmp_path / "ds3")
    env = {"VMCRYPT_PASSWORD": "pw"}
    live = vmcrypt_cli("--home", str(tmp_path / "home-a"), "--user", "admin", "vm", "migrate", "vm1",
                       "--datastore", "ds2", "--to-home", str(tmp_path / "home-b"), env=env)
    assert live.returncode == 1 and "live migration" in live.stderr
    admin.power_off("vm1")
    before = snapshot(tmp_path / "ds1")
    with pytest.raises(VmError, match="no access to the VM's key provider"):
        admin.migrate_to_home("vm1", lonely.login("admin", "pw"), "ds3")
    assert snapshot(tmp_path / "ds1") == before and list((tmp_path / "ds3").iterdir()) == []

    moved = vmcrypt_cli("--home", str(tmp_path / "home-a"), "--user", "admin", "vm", "migrate", "vm1",
                        "--datastore", "ds2", "--to-home", str(tmp_path / "home-b"), env=env)
    assert moved.returncode == 0, moved.stderr
    assert not (tmp_path / "ds1" / "vm1").exists() and source.inventory.vms() == []
    admin_b = target.login("admin", "pw")
    on = admin_b.power_on("vm1")
    _tools(on.vtpm_port, "tpm2_startup", "-c")
    out = tmp_path / "nv"
    _tools(on.vtpm_port, "tpm2_nvread", "0x1500061", "-C", "o", "-o", str(out))
    admin_b.power_off("vm1")
    assert out.read_bytes() == b"MIG"


def test_power_ons_survive_a_kms_crash(tmp_path: Path, kms) -> None:
    """Two KMIP servers in one provider; the first is SIGKILLed mid-run; every power-on still succeeds.

    Each power-on starts a new vTPM process that fetches the VM's key (no cache to lean on).
    On the second server the key id's uid hint names a decoy key: the KEK fails to unwrap and
    is fetched again by name.
    With both servers down, power-on fails naming both and nothing on disk changes.
    """
    from support.kmip_server import register_copy, start_server as start
    from vmcrypt.errors import VmError

    pki, _ = kms
    first, second = start(tmp_path / "kms1", pki), start(tmp_path / "kms2", pki)
    management = Management(tmp_path / "home")
    try:
        management.keys.registry.add_kmip("cluster", [first.address, second.address], pki.ca, pki.client_cert,
                                          pki.client_key, make_default=True, cache_seconds=0)
        management.bootstrap("admin", "pw")
        admin = management.login("admin", "pw")
        admin.add_datastore("ds1", tmp_path / "ds1")
        admin.create_vm("ds1", "vm1")
        record = admin.add_vtpm("vm1")
        provider = management.keys.registry.get("cluster")
        # the second server numbers its objects differently: a decoy takes the uid the first server gave
        from vmcrypt.providers.kmip import split_key_id

        assert split_key_id(record.key_id)[1] == "1"  # the VM's KEK was the first object on the first server
        register_copy(pki, second, "00000000-0000-4000-8000-000000000000", os.urandom(32))
        register_copy(pki, second, record.key_id, provider.get_key(record.key_id))
        provider.close()
        for round_number in range(6):
            if round_number == 3:
                first.kill()
            on = admin.power_on("vm1")
            _tools(on.vtpm_port, "tpm2_startup", "-c")  # the guest's firmware
            assert len(_tools(on.vtpm_port, "tpm2_getrandom", "--hex", "4").strip()) == 8
            admin.power_off("vm1")
        second.stop()
        before = snapshot(tmp_path / "ds1")
        with pytest.raises(VmError, match="no KMIP server of provider 'cluster' answered"):
            admin.power_on("vm1")
        assert snapshot(tmp_path / "ds1") == before
        assert management.inventory.vm("vm1").power_state == "off"
    finally:
        for record in management.inventory.vms():  # a failed assertion must not leave a vTPM running
            if record.power_state == "on":
                management.login("admin", "pw").power_off(record.name)
        management.close()
        first.stop()
        second.stop()
