"""Inventory, roles and the VM lifecycle through the library API.

Table: role (Administrator, No Cryptography Administrator, Read-only) x operation
(console, download, browse, remove vTPM, power on, power off) x VM encrypted or not.
A refusal must name the missing privilege, be in the audit log, and leave every
file of the VM as it was. Inputs tried for refusal besides privileges: a wrong
password, an unknown user, a second power-on, removing a vTPM from a VM without
one, a path outside the VM's directory, a reused console ticket.
"""

from __future__ import annotations

import filecmp
import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from support.files import snapshot
from support.tpm_helpers import check_served_on
from vmcrypt import container, disk_stream
from vmcrypt.errors import VmError
from vmcrypt.inventory import ROOT, Inventory, InventoryError
from vmcrypt.management import Management, PermissionDenied
from vmcrypt.rbac import Privilege
from vmcrypt.vm import VmHome
from vmcrypt.vm_lock import VmBusyError, lock_vm
from vtpm import free_port_pair
from vtpm.host_protocol import HostClient

PASSWORDS = {"admin": "admin-pw", "nocrypto": "nocrypto-pw", "reader": "reader-pw"}


BACKENDS = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def mgmt(home: Path, tmp_path: Path, db_url: str | None):
    m = Management(home, db_url=db_url)
    inv = m.inventory
    for user, password in PASSWORDS.items():
        inv.add_user(user, password)
    inv.grant(ROOT, "admin", "Administrator")
    inv.grant(ROOT, "nocrypto", "No Cryptography Administrator")
    inv.grant(ROOT, "reader", "Read-only")
    inv.add_datastore("ds1", tmp_path / "ds1")
    inv.add_datastore("ds2", tmp_path / "ds2")
    admin = m.login("admin", PASSWORDS["admin"])
    admin.create_vm("ds1", "enc")
    admin.add_vtpm("enc")
    admin.create_vm("ds1", "plain")
    yield m
    for record in inv.vms():
        if record.power_state == "on":
            admin.power_off(record.name)
    m.close()


def _attempt(session, operation: str, vm: str):
    if operation == "console":
        return session.open_console(vm)
    if operation == "download":
        return session.download(vm, f"{vm}.nvram")
    if operation == "browse":
        return session.browse(vm)
    if operation == "remove vTPM":
        return session.remove_vtpm(vm)
    if operation == "power on":
        return session.power_on(vm)
    if operation == "power off":
        return session.power_off(vm)
    if operation == "encrypt":
        return session.encrypt(vm)
    if operation == "rekey":
        return session.rekey(vm)
    if operation == "add vTPM":
        return session.add_vtpm(vm)
    if operation == "snapshot":
        return session.snapshot(vm)
    if operation == "clone":
        return session.clone(vm, f"{vm}-copy")
    if operation == "migrate":
        return session.migrate(vm, "ds2")
    if operation == "delete with key":
        return session.delete_vm(vm, destroy_key=True)
    raise AssertionError(operation)


# (user, operation, vm) -> the missing privilege, or None when allowed
CASES = [
    ("admin", "console", "enc", None), ("admin", "console", "plain", None),
    ("admin", "download", "enc", None), ("admin", "download", "plain", None),
    ("admin", "browse", "enc", None),
    ("nocrypto", "console", "enc", Privilege.CRYPTO_ACCESS), ("nocrypto", "console", "plain", None),
    ("nocrypto", "download", "enc", Privilege.CRYPTO_ACCESS), ("nocrypto", "download", "plain", None),
    ("nocrypto", "browse", "enc", None),
    ("nocrypto", "remove vTPM", "enc", Privilege.CRYPTO_DECRYPT),
    ("nocrypto", "power on", "enc", None), ("nocrypto", "power on", "plain", None),
    ("reader", "console", "plain", Privilege.CONSOLE), ("reader", "download", "plain", Privilege.DATASTORE_BROWSE),
    ("reader", "power on", "enc", Privilege.POWER_ON), ("reader", "remove vTPM", "enc", Privilege.ADD_REMOVE_DEVICE),
    ("admin", "remove vTPM", "enc", None),
    ("nocrypto", "encrypt", "plain", Privilege.CRYPTO_ENCRYPT), ("admin", "encrypt", "plain", None),
    ("nocrypto", "rekey", "enc", Privilege.CRYPTO_RECRYPT), ("admin", "rekey", "enc", None),
    ("nocrypto", "add vTPM", "plain", Privilege.CRYPTO_ENCRYPT), ("admin", "add vTPM", "plain", None),
    ("nocrypto", "snapshot", "enc", None), ("reader", "snapshot", "enc", Privilege.CREATE_SNAPSHOT),
    ("nocrypto", "clone", "enc", Privilege.CRYPTO_CLONE), ("nocrypto", "clone", "plain", None),
    ("admin", "clone", "enc", None),
    ("nocrypto", "migrate", "enc", None), ("nocrypto", "migrate", "plain", None),
    ("reader", "migrate", "enc", Privilege.COLD_MIGRATE),
    ("nocrypto", "delete with key", "enc", Privilege.CRYPTO_MANAGE_KEYS),
]


@pytest.mark.parametrize(("user", "operation", "vm", "missing"), CASES, ids=[f"{u}-{o}-{v}" for u, o, v, _ in CASES])
def test_role_operation_table(mgmt: Management, user: str, operation: str, vm: str, missing: Privilege | None) -> None:
    session = mgmt.login(user, PASSWORDS[user])
    record = mgmt.inventory.vm(vm)
    directory = Path(record.vmx_path).parent
    before = snapshot(directory)
    audit_before = len(mgmt.inventory.audit_log())
    if missing is None:
        result = _attempt(session, operation, vm)
        last = mgmt.inventory.audit_log()[-1]
        assert (last.user, last.outcome) == (user, "ok") and len(mgmt.inventory.audit_log()) == audit_before + 1
        if operation == "download":
            assert result == (directory / f"{vm}.nvram").read_bytes()
            assert container.is_container(directory / f"{vm}.nvram") == record.encrypted  # raw datastore bytes
        if operation == "console":
            assert mgmt.inventory.redeem_console_ticket(result) == (vm, user)
        if operation == "remove vTPM":
            assert not mgmt.inventory.vm(vm).vtpm
        if operation == "power on":
            assert mgmt.inventory.vm(vm).power_state == "on"
            session.power_off(vm)
        if operation in ("encrypt", "add vTPM"):
            assert mgmt.inventory.vm(vm).encrypted
        if operation == "clone":
            assert mgmt.inventory.vm(f"{vm}-copy").encrypted == record.encrypted
        if operation == "migrate":
            moved = mgmt.inventory.vm(vm)
            assert moved.datastore == "ds2" and Path(moved.vmx_path).exists() and not directory.exists()
            if moved.vtpm:  # the vTPM still opens from the new place, and the CA knows where it went
                assert _vtpm_state(mgmt, vm) is not None
                assert moved.vmx_path in mgmt.ca.certified_vms() and record.vmx_path not in mgmt.ca.certified_vms()
    else:
        with pytest.raises(PermissionDenied) as refused:
            _attempt(session, operation, vm)
        assert missing in refused.value.missing and missing.value in str(refused.value)
        assert snapshot(directory) == before
        entries = mgmt.inventory.audit_log()
        assert len(entries) == audit_before + 1
        assert (entries[-1].user, entries[-1].outcome) == (user, "denied") and missing.value in entries[-1].detail


PG_CASES = [c for c in CASES if c[1] in ("power on", "encrypt", "console", "clone", "migrate")]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("user", "operation", "vm", "missing"), PG_CASES,
                         ids=[f"{u}-{o}-{v}" for u, o, v, _ in PG_CASES])
def test_role_operation_table_on_postgresql(mgmt: Management, user: str, operation: str, vm: str,
                                            missing: Privilege | None) -> None:
    test_role_operation_table(mgmt, user, operation, vm, missing)


@BACKENDS
def test_lifecycle_with_served_vtpm(mgmt: Management, tmp_path: Path) -> None:
    """NV data and PCRs written through the powered-on VM's vTPM survive power off/on, encrypted at rest."""
    admin = mgmt.login("admin", PASSWORDS["admin"])
    nocrypto = mgmt.login("nocrypto", PASSWORDS["nocrypto"])
    on = nocrypto.power_on("enc")  # No Cryptography Administrator may power on an encrypted VM
    with pytest.raises(VmError, match="already powered on"):
        nocrypto.power_on("enc")
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={on.vtpm_port}"}

    def tool(*args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(args, env=env, input=stdin, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    tool("tpm2_startup", "-c")
    tool("tpm2_nvdefine", "0x1500020", "-C", "o", "-s", "16", "-a", "ownerread|ownerwrite")
    tool("tpm2_nvwrite", "0x1500020", "-C", "o", "-i", "-", stdin=b"LIFECYCLE-SECRET")
    tool("tpm2_pcrextend", "16:sha256=" + "ab" * 32)
    pcr16 = tool("tpm2_pcrread", "sha256:16")
    nocrypto.power_off("enc")
    nvram = Path(mgmt.inventory.vm("enc").vmx_path).with_suffix(".nvram")
    assert container.is_container(nvram) and b"LIFECYCLE-SECRET" not in nvram.read_bytes()
    with pytest.raises(PermissionDenied, match="Cryptographer.Access"):
        nocrypto.download("enc", "enc.nvram")
    with pytest.raises(PermissionDenied, match="Cryptographer.Decrypt"):
        nocrypto.remove_vtpm("enc")
    again = admin.power_on("enc")
    env["TPM2TOOLS_TCTI"] = f"swtpm:host=127.0.0.1,port={again.vtpm_port}"
    tool("tpm2_startup", "-c")
    out = tmp_path / "nv.out"
    tool("tpm2_nvread", "0x1500020", "-C", "o", "-o", str(out))
    assert out.read_bytes() == b"LIFECYCLE-SECRET"
    assert tool("tpm2_pcrread", "sha256:16") != pcr16  # a cold boot resets PCR 16
    admin.power_off("enc")
    with pytest.raises(VmError, match="already powered off"):
        admin.power_off("enc")


def test_refusals_and_audit(mgmt: Management, home: Path) -> None:
    with pytest.raises(InventoryError, match="login failed"):
        mgmt.login("admin", "wrong")
    with pytest.raises(InventoryError, match="login failed"):
        mgmt.login("nobody", "x")
    admin = mgmt.login("admin", PASSWORDS["admin"])
    with pytest.raises(VmError, match="has no vTPM"):
        admin.remove_vtpm("plain")
    with pytest.raises(VmError, match="no file"):
        admin.download("plain", "../enc/enc.nvram")
    ticket = admin.open_console("enc")
    assert mgmt.inventory.redeem_console_ticket(ticket) == ("enc", "admin")
    with pytest.raises(InventoryError, match="already used"):
        mgmt.inventory.redeem_console_ticket(ticket)
    with pytest.raises(VmError, match="stays encrypted"):
        admin.decrypt("enc")
    log = mgmt.inventory.audit_log()
    assert [e.outcome for e in log if e.action == "login"] == ["denied", "denied"]
    assert any(e.action == "remove vTPM" and e.outcome == "failed" for e in log)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        mgmt.inventory.db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        mgmt.inventory.db.execute("UPDATE audit SET outcome = 'ok'")
    assert (home / "inventory.db").stat().st_mode & 0o777 == 0o600
    raw = (home / "inventory.db").read_bytes()
    assert all(p.encode() not in raw for p in PASSWORDS.values())


def test_permission_propagation_and_groups(home: Path, tmp_path: Path) -> None:
    with Inventory(home) as inv:
        assert inv.schema_version == 3
        inv.add_user("ann", "pw")
        inv.add_datastore("ds", tmp_path / "ds")
        inv.add_group("ops")
        inv.add_to_group("ops", "ann")
        inv.grant(ROOT, "ops", "Administrator", group=True)
        assert Privilege.CRYPTO_ACCESS in inv.privileges("ann", ("datastore", "ds"))
        # nearer permission wins: No Cryptography Administrator on the datastore
        inv.grant(("datastore", "ds"), "ops", "No Cryptography Administrator", group=True)
        assert Privilege.CRYPTO_ACCESS not in inv.privileges("ann", ("datastore", "ds"))
        assert Privilege.POWER_ON in inv.privileges("ann", ("datastore", "ds"))
        # the user's own permission beats the group's at the same level
        inv.grant(("datastore", "ds"), "ann", "Read-only")
        assert inv.privileges("ann", ("datastore", "ds")) == frozenset({Privilege.SYSTEM_VIEW, Privilege.SYSTEM_READ})
        # a non-propagating permission stays on its object
        inv.add_user("bob", "pw")
        inv.grant(ROOT, "bob", "Administrator", propagate=False)
        assert inv.privileges("bob", ("datastore", "ds")) == frozenset()
        assert Privilege.CRYPTO_ACCESS in inv.privileges("bob", ROOT)
        inv.add_role("Operator", {Privilege.POWER_ON, Privilege.POWER_OFF})
        inv.grant(("datastore", "ds"), "bob", "Operator")
        assert inv.privileges("bob", ("datastore", "ds")) == frozenset({Privilege.POWER_ON, Privilege.POWER_OFF})
        with pytest.raises(InventoryError, match="no role"):
            inv.grant(ROOT, "bob", "Superuser")
        with pytest.raises(InventoryError, match="no user"):
            inv.grant(ROOT, "carol", "Administrator")
        assert "TrustedAdmins" in [r[0] for r in inv.db.execute("SELECT name FROM groups")]
    # reopening keeps the schema and refuses a newer one
    with Inventory(home) as inv:
        assert inv.users() == ["ann", "bob"]
        inv.db.execute("PRAGMA user_version = 99")
    with pytest.raises(InventoryError, match="schema version 99"):
        Inventory(home)


@BACKENDS
def test_snapshot_revert_and_delete(mgmt: Management, tmp_path: Path) -> None:
    """Reverting a snapshot rolls the vTPM back: an NV index written after the snapshot reads as before."""
    admin = mgmt.login("admin", PASSWORDS["admin"])
    reader = mgmt.login("reader", PASSWORDS["reader"])

    def with_tpm(*commands: tuple[str, ...], stdin: bytes | None = None) -> None:
        record = admin.power_on("enc")
        env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={record.vtpm_port}"}
        try:
            subprocess.run(["tpm2_startup", "-c"], env=env, check=True, capture_output=True)
            for command in commands:
                subprocess.run(command, env=env, check=True, capture_output=True, input=stdin if "-i" in command else None)
        finally:
            admin.power_off("enc")

    with_tpm(("tpm2_nvdefine", "0x1500040", "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite"),
             ("tpm2_nvwrite", "0x1500040", "-C", "o", "-i", "-"), stdin=b"BEFORE!!")
    with pytest.raises(PermissionDenied, match="VirtualMachine.State.CreateSnapshot"):
        reader.snapshot("enc")
    snap = admin.snapshot("enc")
    assert snap.number == 1 and container.is_container(snap.path) and b"BEFORE!!" not in snap.path.read_bytes()
    with_tpm(("tpm2_nvwrite", "0x1500040", "-C", "o", "-i", "-"), stdin=b"AFTER!!!")
    nvram = Path(mgmt.inventory.vm("enc").vmx_path).with_suffix(".nvram")
    # a damaged snapshot is refused and the .nvram stays as it is
    good = snap.path.read_bytes()
    snap.path.write_bytes(good[:-10])
    current = nvram.read_bytes()
    with pytest.raises(Exception, match="enc-Snapshot1.vmsn"):
        admin.revert("enc")
    assert nvram.read_bytes() == current
    snap.path.write_bytes(good)
    assert admin.revert("enc").number == 1
    with_tpm(("tpm2_nvread", "0x1500040", "-C", "o", "-o", str(tmp_path / "nv")))
    assert (tmp_path / "nv").read_bytes() == b"BEFORE!!"
    with pytest.raises(VmError, match="no snapshot 7"):
        admin.revert("enc", 7)

    directory = Path(mgmt.inventory.vm("plain").vmx_path).parent
    with pytest.raises(PermissionDenied, match="VirtualMachine.Inventory.Delete"):
        reader.delete_vm("plain")
    assert directory.exists()
    admin.delete_vm("plain")
    assert not directory.exists() and [r.name for r in mgmt.inventory.vms()] == ["enc"]


def _vtpm_state(mgmt: Management, name: str):
    from vmcrypt.vm_vtpm import VmNvramStore

    with VmNvramStore.open(mgmt.inventory.vm(name).vmx_path, home=str(mgmt.home)) as store:
        return store.load()


@BACKENDS
def test_clone_new_identity_and_exact(mgmt: Management, tmp_path: Path) -> None:
    """A default clone answers as a new TPM; an exact clone (Cryptographer.Clone) as the same one."""
    admin = mgmt.login("admin", PASSWORDS["admin"])
    nocrypto = mgmt.login("nocrypto", PASSWORDS["nocrypto"])
    source = _vtpm_state(mgmt, "enc")
    cert_index = 0x01C00002

    fresh = admin.clone("enc", "enc-clone")
    assert fresh.encrypted and fresh.vtpm and fresh.key_id != mgmt.inventory.vm("enc").key_id
    clone_state = _vtpm_state(mgmt, "enc-clone")
    assert clone_state.eps != source.eps and clone_state.nv[cert_index].data != source.nv[cert_index].data
    nvram = Path(fresh.vmx_path).with_suffix(".nvram")
    assert container.is_container(nvram)

    exact = admin.clone("enc", "enc-twin", exact=True)
    twin = _vtpm_state(mgmt, "enc-twin")
    assert twin.eps == source.eps and twin.nv[cert_index].data == source.nv[cert_index].data
    assert exact.key_id != mgmt.inventory.vm("enc").key_id  # same TPM, its own keys
    assert b"vmcrypt-vtpm" not in Path(exact.vmx_path).with_suffix(".nvram").read_bytes()

    with pytest.raises(PermissionDenied, match="Cryptographer.Clone"):
        nocrypto.clone("enc", "nope")
    assert not (Path(fresh.vmx_path).parent.parent / "nope").exists()
    plain_clone = nocrypto.clone("plain", "plain-clone")
    assert not plain_clone.encrypted and not plain_clone.vtpm
    with pytest.raises(InventoryError, match="already in the inventory"):
        admin.clone("plain", "plain-clone")


def test_clone_copies_an_encrypted_disk(mgmt: Management) -> None:
    from vmcrypt.vm import VmHome, VmSpec
    from vmcrypt.vm_encryption import encrypt_vm

    admin = mgmt.login("admin", PASSWORDS["admin"])
    record = admin.create_vm("ds1", "disky", VmSpec(name="disky", disk_bytes=1 << 20))
    extent = Path(record.vmx_path).parent / "disky-flat.vmdk"
    pattern = os.urandom(1 << 20)
    extent.write_bytes(pattern)
    encrypt_vm(VmHome(record.vmx_path), mgmt.keys, include_disks=True)
    assert pattern[:4096] not in extent.read_bytes()
    clone = admin.clone("disky", "disky2")
    clone_extent = Path(clone.vmx_path).parent / "disky2-flat.vmdk"
    assert clone.encrypted and container.is_container(clone_extent) and pattern[:4096] not in clone_extent.read_bytes()
    assert container.read_header(clone_extent).reference.key_id != container.read_header(extent).reference.key_id
    out = Path(clone.vmx_path).parent / "check.bin"
    container.decrypt_file(clone_extent, mgmt.keys.unlock(container.read_header(clone_extent).reference), out)
    assert out.read_bytes() == pattern


def test_suspend_and_resume_keep_the_pcrs(mgmt: Management) -> None:
    admin = mgmt.login("admin", PASSWORDS["admin"])
    reader = mgmt.login("reader", PASSWORDS["reader"])
    record = admin.power_on("enc")

    def tools(port: int, *args: str) -> str:
        env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}"}
        return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout

    tools(record.vtpm_port, "tpm2_startup", "-c")
    tools(record.vtpm_port, "tpm2_pcrextend", "7:sha256=" + "5a" * 32)
    before = tools(record.vtpm_port, "tpm2_pcrread", "sha256:7")
    with pytest.raises(PermissionDenied, match="VirtualMachine.Interact.Suspend"):
        reader.suspend("enc")
    suspended = admin.suspend("enc")
    assert suspended.power_state == "suspended" and suspended.vtpm_pid is None
    vmss = Path(suspended.vmx_path).with_suffix(".vmss")
    pcr_hex = before.split("0x")[-1].strip().lower()
    assert container.is_container(vmss) and pcr_hex.encode() not in vmss.read_bytes()
    with pytest.raises(VmError, match="is suspended"):
        admin.power_on("enc")
    resumed = admin.resume("enc")
    assert not vmss.exists()
    # the guest does not start the TPM again: it is running, with PCR 7 as it was
    assert tools(resumed.vtpm_port, "tpm2_pcrread", "sha256:7") == before
    admin.suspend("enc")
    admin.power_off("enc")  # discards the suspended state
    assert not vmss.exists()
    cold = admin.power_on("enc")
    tools(cold.vtpm_port, "tpm2_startup", "-c")
    assert tools(cold.vtpm_port, "tpm2_pcrread", "sha256:7") != before
    admin.power_off("enc")
    with pytest.raises(VmError, match="not suspended"):
        admin.resume("enc")


def test_powered_on_vtpms_share_the_homes_host(mgmt: Management, home: Path) -> None:
    """Power-on adds the VM's vTPM to one `vtpm host` per home; the VM's lock is held while it runs;
    power-off removes it (saved, lock released) and the host ends with its last vTPM."""
    admin = mgmt.login("admin", PASSWORDS["admin"])
    admin.create_vm("ds1", "enc2")
    admin.add_vtpm("enc2")
    first, second = admin.power_on("enc"), admin.power_on("enc2")
    assert first.vtpm_pid == second.vtpm_pid and first.vtpm_port != second.vtpm_port
    host_dir = home / "run" / "vtpm"
    assert oct(os.stat(host_dir).st_mode & 0o777) == "0o700"
    assert oct(os.stat(host_dir / "host.sock").st_mode & 0o777) == "0o600"
    listed = {v["name"]: v for v in HostClient(host_dir / "host.sock").list()}
    assert set(listed) == {"enc", "enc2"} and not any(v["loaded"] for v in listed.values())  # nothing read yet
    assert listed["enc"]["ctrl_unix"] == str(host_dir / "enc.ctrl")
    with pytest.raises(VmBusyError, match="vTPM is running"):
        lock_vm(VmHome(first.vmx_path), "rekey")  # the host holds the VM's lock
    admin.power_off("enc")
    assert [v["name"] for v in HostClient(host_dir / "host.sock").list()] == ["enc2"]
    lock_vm(VmHome(first.vmx_path), "rekey").release()  # released at power-off
    admin.power_off("enc2")
    deadline = time.monotonic() + 20
    while mgmt.supervisor.running(first.vtpm_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not mgmt.supervisor.running(first.vtpm_pid)  # the host ended with its last vTPM
    again = admin.power_on("enc")  # and a new one starts on demand
    assert again.vtpm_pid != first.vtpm_pid
    admin.power_off("enc")


def test_power_on_serves_on_the_port_and_unix_path_the_caller_chose(mgmt: Management, tmp_path: Path) -> None:
    """A library caller picks the vTPM's endpoints; a port already in use is an error and the VM stays off."""
    admin = mgmt.login("admin", PASSWORDS["admin"])
    port, data_unix = free_port_pair(), tmp_path / "enc.sock"
    record = admin.power_on("enc", port=port, data_unix=data_unix)
    try:
        assert record.vtpm_port == port
        check_served_on(port, data_unix)
    finally:
        admin.power_off("enc")
    busy = free_port_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        with pytest.raises(VmError, match="did not start"):
            admin.power_on("enc", port=busy)
    assert admin.vm("enc").power_state == "off"


@pytest.mark.parametrize("encrypted_home", [False, True], ids=["plain VM", "encrypted VM, plain disk"])
def test_clone_and_migration_of_a_plain_disk_keep_its_holes(mgmt: Management, encrypted_home: bool) -> None:
    """A plain disk is cloned sparse (only its data extents are copied): `du` of the clone's disk is
    that of the source, and every byte is the same; with encrypted home files the clone's disk is
    encrypted from that sparse copy and stays sparse too. Migrating the VM keeps the holes as well."""
    from vmcrypt.vm import VmSpec
    from vmcrypt.vm_encryption import encrypt_vm

    admin = mgmt.login("admin", PASSWORDS["admin"])
    size = 64 << 20
    record = admin.create_vm("ds1", "sparse", VmSpec(name="sparse", disk_bytes=size))
    extent = Path(record.vmx_path).parent / "sparse-flat.vmdk"
    data = os.urandom(1 << 20)
    with open(extent, "r+b") as f:
        for offset in (0, 20 << 20, size - (1 << 20)):
            f.seek(offset)
            f.write(data)
    if encrypted_home:  # home files only: the disk stays a plain file
        encrypt_vm(VmHome(record.vmx_path), mgmt.keys, include_disks=False)
    allocated = os.stat(extent).st_blocks * 512
    assert allocated <= 4 << 20  # the source really is sparse
    clone = admin.clone("sparse", "sparse2")
    clone_extent = Path(clone.vmx_path).parent / "sparse2-flat.vmdk"
    assert os.stat(clone_extent).st_blocks * 512 <= allocated + (64 << 10)
    du = subprocess.run(["du", "-k", str(extent), str(clone_extent)], capture_output=True, text=True, check=True)
    source_kib, clone_kib = (int(line.split()[0]) for line in du.stdout.splitlines())
    assert clone_kib <= source_kib + 64
    if encrypted_home:
        assert clone.encrypted and container.is_container(clone_extent)
        plain = Path(clone.vmx_path).parent / "check.img"
        disk_stream.decrypt_disk(clone_extent, mgmt.keys.unlock(container.read_header(clone_extent).reference),
                                 destination=plain)
    else:
        assert not clone.encrypted and not container.is_container(clone_extent)
        plain = clone_extent
    assert os.path.getsize(plain) == size and filecmp.cmp(plain, extent, shallow=False)
    moved = admin.migrate("sparse", "ds2")  # a cold migration copies the directory the same way
    moved_extent = Path(moved.vmx_path).parent / "sparse-flat.vmdk"
    assert os.stat(moved_extent).st_blocks * 512 <= allocated + (64 << 10)
    assert filecmp.cmp(moved_extent, plain, shallow=False)
