"""Files that defend themselves: what a hostile operator with write access to the datastore
and the management home tries, and what each attempt now gets.

Inputs tried (each must be refused with one clear ``error:`` line or exception naming the file
and why, every file left byte for byte as it was, and the legitimate path must still work):

- rollback: an older ``.nvram`` copied back after NV writes or dictionary-attack failures, through
  ``vtpm serve --vm`` and through the management plane's power-on (accepted only with
  ``--accept-rollback``, audited); snapshot revert and backup restore are not rollbacks;
- decrypt: a flipped container magic, a zero-byte, a deleted home file; another VM's ``.nvram``;
  ``namespacedb`` and ``vmware.log`` swapped; the ``encryption.data`` line deleted; a sensitive
  setting added in clear; a forged ``decrypt`` journal (a real interrupted decrypt still resumes);
- the lock: rekey/decrypt/encrypt/snapshot/backup while the vTPM is served; serving while an
  operation holds the VM;
- leftovers: ``.vmcrypt-tmp-*`` copies of the ``.nvram`` in the VM directory;
- the inventory: emptied (and ``inventory init`` over it), truncated, random bytes, a table dropped;
  ``providers.json`` with wrong types; a journal holding ``[]`` or ``null``; a backup manifest with
  ``"vm": 5``;
- the vTPM child process's environment (no ``$VMCRYPT_PASSWORD``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from support.files import snapshot
from support.servers import start_vtpm
from support.tools import tools
from vmcrypt import container
from vmcrypt.errors import RollbackError
from vmcrypt.inventory import ROOT
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm
from vmcrypt.management import Management, PermissionDenied
from vmcrypt.vm import VmHome
from vmcrypt.vm_lock import VmBusyError, lock_vm

CLI_PASSWORD = "correct horse battery"  # long enough for the inventory password policy

ROLLED_BACK = "is older than the last saved generation"


def refused(result, *phrases: str) -> str:
    """Exit 1, exactly one `error:` line holding every phrase, no traceback; returns the line."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"
    return errors[0]


def serve_once(vmx: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """`vtpm serve --vm` expected to refuse (exits at once)."""
    env = {**os.environ, "VMCRYPT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "vmcrypt.vtpm_command", "serve", "--vm", str(vmx), "--port", "1"],
                          capture_output=True, text=True, env=env, timeout=60)


def generation(path: Path) -> int:
    return container.read_header(path).generation


@pytest.fixture
def vtpm_vm(tmp_path: Path, home: Path, vmcrypt_cli, monkeypatch) -> Path:
    """An unmanaged, encrypted VM with a vTPM; served processes find the key provider via $VMCRYPT_HOME."""
    vm = tmp_path / "ds" / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    vmcrypt_cli("vtpm", "add", str(vm), check=True)
    monkeypatch.setenv("VMCRYPT_HOME", str(home))
    return vm


@pytest.fixture
def encrypted_vm(tmp_path: Path, vmcrypt_cli) -> Path:
    vm = tmp_path / "ds" / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    with open(vm / "vm1.vmx", "a") as vmx:
        vmx.write('guestinfo.secret = "MARKER-GUESTINFO"\n')
    vmcrypt_cli("encrypt", str(vm), check=True)
    return vm


# ----------------------------------------------------------------------------- 1. rollback of the .nvram


def test_rolled_back_nvram_is_refused_by_vtpm_serve(tmp_path: Path, home: Path, vtpm_vm: Path, vmcrypt_cli) -> None:
    vmx, nvram = vtpm_vm / "vm1.vmx", vtpm_vm / "vm1.nvram"
    old = nvram.read_bytes()
    first = generation(nvram)
    with start_vtpm(["--vm", str(vmx), "--startup-clear"], tmp_path / "log1") as tpm:
        tools(tpm, "tpm2_nvdefine", "0x1500070", "-C", "o", "-s", "8", "-a", "ownerread|ownerwrite")
        tools(tpm, "tpm2_nvwrite", "0x1500070", "-C", "o", "-i", "-", stdin=b"NEWER!!!")
    latest = generation(nvram)
    assert latest > first  # the journaled changes were folded into a new generation when the server stopped
    nvram.write_bytes(old)
    before = snapshot(vtpm_vm)
    refused(serve_once(vmx, home), str(nvram), f"generation {first} {ROLLED_BACK} {latest}",
            "the file was rolled back")
    assert snapshot(vtpm_vm) == before
    info = vmcrypt_cli("describe", str(vtpm_vm), check=True)  # describing needs no key and changes nothing
    assert info.returncode == 0 and snapshot(vtpm_vm) == before

    # the administrator restored that copy on purpose: accept it, and the vTPM serves it (NV index gone)
    accepted = json.loads(vmcrypt_cli("vtpm", "accept-rollback", str(vtpm_vm), "--json", check=True).stdout)
    assert accepted["nvram_generation"] == first
    with start_vtpm(["--vm", str(vmx), "--startup-clear"], tmp_path / "log2") as tpm:
        gone = tools(tpm, "tpm2_nvread", "0x1500070", "-C", "o", check=False)
        assert gone.returncode != 0
    assert generation(nvram) > first


def _mgmt(home: Path, tmp_path: Path) -> Management:
    m = Management(home)
    m.bootstrap("admin", CLI_PASSWORD)
    m.inventory.add_user("nocrypto", "pw2")
    m.inventory.grant(ROOT, "nocrypto", "No Cryptography Administrator")
    admin = m.login("admin", CLI_PASSWORD)
    admin.add_datastore("ds1", tmp_path / "ds1")
    admin.create_vm("ds1", "vm1")
    admin.add_vtpm("vm1")
    return m


@pytest.fixture
def mgmt(home: Path, tmp_path: Path):
    m = _mgmt(home, tmp_path)
    yield m
    for record in m.inventory.vms():
        if record.power_state == "on":
            m.login("admin", CLI_PASSWORD).power_off(record.name)
    m.close()


def _tpm(port: int, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}"}
    done = subprocess.run(args, env=env, input=stdin, capture_output=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr.decode()
    return done


def _failed_tries(vmx: Path, home: Path) -> int:
    env = {**os.environ, "VMCRYPT_HOME": str(home)}
    out = subprocess.run([sys.executable, "-m", "vmcrypt.vtpm_command", "info", "--vm", str(vmx), "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)["dictionary_attack"]["failed_tries"]


def test_rolled_back_nvram_is_refused_at_power_on(mgmt: Management, home: Path) -> None:
    admin = mgmt.login("admin", CLI_PASSWORD)
    nocrypto = mgmt.login("nocrypto", "pw2")
    vmx = Path(mgmt.inventory.vm("vm1").vmx_path)
    nvram = vmx.with_suffix(".nvram")
    old = nvram.read_bytes()
    on = admin.power_on("vm1")
    _tpm(on.vtpm_port, "tpm2_startup", "-c")
    _tpm(on.vtpm_port, "tpm2_nvdefine", "0x1500071", "-C", "o", "-s", "4", "-p", "right", "-a", "authread|authwrite")
    for _ in range(2):  # dictionary-attack failures: the counter is part of the .nvram
        assert _tpm(on.vtpm_port, "tpm2_nvread", "0x1500071", "-C", "0x1500071", "-P", "wrong",
                    check=False).returncode != 0
    admin.power_off("vm1")
    assert _failed_tries(vmx, home) == 2
    record = mgmt.inventory.vm("vm1")
    assert record.nvram_generation == generation(nvram) > container.parse_header(old).generation

    nvram.write_bytes(old)  # the hostile operator puts the older copy back
    before = snapshot(vmx.parent)
    audit_before = len(mgmt.inventory.audit_log())
    with pytest.raises(RollbackError, match=f"vm1.nvram: generation .* {ROLLED_BACK} .*the file was rolled back"):
        nocrypto.power_on("vm1")
    assert snapshot(vmx.parent) == before and mgmt.inventory.vm("vm1").power_state == "off"
    last = mgmt.inventory.audit_log()[-1]
    assert len(mgmt.inventory.audit_log()) == audit_before + 1
    assert (last.user, last.action, last.outcome) == ("nocrypto", "power on", "failed") and "rolled back" in last.detail
    # accepting it needs more than power on: a No Cryptography Administrator may not
    with pytest.raises(PermissionDenied, match="Cryptographer.ManageKeys"):
        nocrypto.power_on("vm1", accept_rollback=True)
    assert snapshot(vmx.parent) == before
    # the key provider's record alone also refuses it (a vTPM started outside the management plane)
    assert f"{ROLLED_BACK}" in serve_once(vmx, home).stderr
    assert snapshot(vmx.parent) == before

    on = admin.power_on("vm1", accept_rollback=True)
    last = mgmt.inventory.audit_log()[-1]
    assert (last.action, last.outcome) == ("power on accepting a rolled-back .nvram", "ok")
    assert "accepted a rolled-back vm1.nvram" in last.detail
    _tpm(on.vtpm_port, "tpm2_startup", "-c")
    assert _tpm(on.vtpm_port, "tpm2_nvreadpublic", "0x1500071", check=False).returncode != 0
    admin.power_off("vm1")
    assert _failed_tries(vmx, home) == 0  # accepted: the older state is the VM's now
    admin.power_on("vm1")  # and it is no rollback any more
    admin.power_off("vm1")


def test_revert_and_restore_are_new_generations(mgmt: Management, tmp_path: Path) -> None:
    admin = mgmt.login("admin", CLI_PASSWORD)
    vmx = Path(mgmt.inventory.vm("vm1").vmx_path)
    nvram = vmx.with_suffix(".nvram")
    admin.snapshot("vm1")
    on = admin.power_on("vm1")
    _tpm(on.vtpm_port, "tpm2_startup", "-c")
    _tpm(on.vtpm_port, "tpm2_nvdefine", "0x1500072", "-C", "o", "-s", "4", "-a", "ownerread|ownerwrite")
    admin.power_off("vm1")
    after_write = generation(nvram)
    admin.revert("vm1")  # older content, written as a newer generation: not a rollback
    assert generation(nvram) > after_write
    on = admin.power_on("vm1")
    _tpm(on.vtpm_port, "tpm2_startup", "-c")
    assert _tpm(on.vtpm_port, "tpm2_nvreadpublic", "0x1500072", check=False).returncode != 0
    admin.power_off("vm1")

    archive = tmp_path / "vm1.tar"
    admin.backup("vm1", archive, include_disks=False)
    backed_up = generation(nvram)
    on = admin.power_on("vm1")
    _tpm(on.vtpm_port, "tpm2_startup", "-c")
    _tpm(on.vtpm_port, "tpm2_nvdefine", "0x1500073", "-C", "o", "-s", "4", "-a", "ownerread|ownerwrite")
    admin.power_off("vm1")
    latest = nvram.read_bytes()
    admin.delete_vm("vm1")
    restored = admin.restore(archive, "ds1")  # an older state on purpose: it becomes the latest
    assert generation(nvram) > container.parse_header(latest).generation > backed_up
    assert restored.nvram_generation == generation(nvram)
    on = admin.power_on("vm1")
    _tpm(on.vtpm_port, "tpm2_startup", "-c")
    assert _tpm(on.vtpm_port, "tpm2_nvreadpublic", "0x1500073", check=False).returncode != 0
    admin.power_off("vm1")
    nvram.write_bytes(latest)  # what was there before the restore is a rollback now
    with pytest.raises(RollbackError):
        admin.power_on("vm1")


# ----------------------------------------------------------------------------- 2. decrypt refuses what is not the VM's


def _damage_cases(vm: Path, other: Path) -> dict:
    def flip_magic() -> None:
        blob = bytearray((vm / "vm1.nvram").read_bytes())
        blob[0] ^= 0x01
        (vm / "vm1.nvram").write_bytes(bytes(blob))

    def swap() -> None:
        log, db = (vm / "vmware.log").read_bytes(), (vm / "namespacedb").read_bytes()
        (vm / "vmware.log").write_bytes(db)
        (vm / "namespacedb").write_bytes(log)

    def drop_data() -> None:
        lines = (vm / "vm1.vmx").read_text().splitlines(keepends=True)
        (vm / "vm1.vmx").write_text("".join(line for line in lines if not line.startswith("encryption.data")))

    def add_clear_setting() -> None:
        with open(vm / "vm1.vmx", "a") as vmx:
            vmx.write('guestinfo.evil = "x"\n')

    return {
        "flipped magic": (flip_magic, ["vm1.nvram", "is not an encrypted vmcrypt file",
                                       "lists it as encrypted"]),
        "zero bytes": (lambda: (vm / "namespacedb").write_bytes(b""), ["namespacedb", "is empty (0 bytes)"]),
        "deleted": (lambda: (vm / "vmware.log").unlink(), ["vmware.log", "is missing"]),
        "another VM's nvram": (lambda: shutil.copyfile(other / "vm1.nvram", vm / "vm1.nvram"),
                               ["vm1.nvram", "belongs to another VM"]),
        "swapped": (swap, ["namespacedb", "holds the file 'log:vmware.log', not 'namespacedb:namespacedb'"]),
        "encryption.data deleted": (drop_data, ["vm1.vmx", "encryption.data is not",
                                                "encrypted settings were removed"]),
        "sensitive setting in clear": (add_clear_setting, ["vm1.vmx", "'guestinfo.evil' is in clear in an encrypted VM"]),
    }


@pytest.mark.parametrize("case", ["flipped magic", "zero bytes", "deleted", "another VM's nvram", "swapped",
                                  "encryption.data deleted", "sensitive setting in clear"])
def test_decrypt_refuses_files_that_are_not_the_vms(tmp_path: Path, encrypted_vm: Path, vmcrypt_cli, case: str) -> None:
    vm = encrypted_vm
    other = tmp_path / "elsewhere" / "vm1"  # another VM, same name: same labels, other VM id and key
    vmcrypt_cli("vm", "create", str(other), check=True)
    vmcrypt_cli("encrypt", str(other), check=True)
    damage, phrases = _damage_cases(vm, other)[case]
    damage()
    before = snapshot(vm)
    refused(vmcrypt_cli("decrypt", str(vm)), *phrases)
    assert snapshot(vm) == before
    refused(vmcrypt_cli("rekey", str(vm), "--deep"), *phrases)
    assert snapshot(vm) == before


def test_power_on_refuses_a_vm_with_a_missing_file(home: Path, vtpm_vm: Path) -> None:
    (vtpm_vm / "namespacedb").unlink()
    before = snapshot(vtpm_vm)
    refused(serve_once(vtpm_vm / "vm1.vmx", home), "namespacedb", "is missing")
    assert snapshot(vtpm_vm) == before


def test_an_interrupted_decrypt_still_resumes_but_a_forged_journal_does_not_help(
        tmp_path: Path, home: Path, vmcrypt_cli, keys, monkeypatch) -> None:
    from vmcrypt import vm_encryption

    vm = tmp_path / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    original = snapshot(vm)
    vmcrypt_cli("encrypt", str(vm), check=True)
    encrypted = snapshot(vm)

    # a forged "decrypt in progress" journal does not make a damaged listed file pass for clear
    blob = bytearray((vm / "vmware.log").read_bytes())
    blob[0] ^= 0x01
    (vm / "vmware.log").write_bytes(bytes(blob))
    (vm / ".vm1.vmcrypt-journal").write_text(json.dumps(
        {"format": 2, "operation": "decrypt", "target": None, "include_disks": True, "started": "x", "vm_id": None,
         "references": [], "mac_key": None, "mac": None}))
    before = snapshot(vm)
    refused(vmcrypt_cli("decrypt", str(vm)), "vmware.log", "lists it as encrypted")
    assert snapshot(vm) == before
    (vm / ".vm1.vmcrypt-journal").unlink()
    (vm / "vmware.log").write_bytes(encrypted["vmware.log"])

    # a real decrypt that dies after its first file: running decrypt again finishes it
    real_decrypt, calls = container.decrypt_file, []

    def dying(*args, **kwargs):
        if calls:
            raise OSError(28, "No space left on device")
        calls.append(args)
        return real_decrypt(*args, **kwargs)

    monkeypatch.setattr(container, "decrypt_file", dying)
    with pytest.raises(OSError):
        vm_encryption.decrypt_vm(VmHome(vm), keys)
    monkeypatch.setattr(container, "decrypt_file", real_decrypt)
    assert (vm / ".vm1.vmcrypt-journal").exists()
    assert sum(not container.is_container(vm / n) for n in ("vm1.nvram", "vmware.log", "namespacedb")) == 1
    result = vmcrypt_cli("decrypt", str(vm), "--json", check=True)
    assert json.loads(result.stdout)["resumed"]
    assert snapshot(vm) == original


def test_headers_carry_the_vm_id_and_version_1_files_still_open(tmp_path: Path, encrypted_vm: Path) -> None:
    vmx = (encrypted_vm / "vm1.vmx").read_text()
    uuid_bios = next(line for line in vmx.splitlines() if line.startswith("uuid.bios")).split('"')[1]
    for name in ("vm1.nvram", "vmware.log", "namespacedb"):
        header = container.read_header(encrypted_vm / name)
        assert header.version == 2 and header.vm_id.replace("-", "") == uuid_bios.replace(" ", "").replace("-", "")
        assert header.label.endswith(f":{name}")
    # a version 1 file (as earlier builds wrote) still decrypts
    key = DataKey(os.urandom(32), KeyReference("p", "k", WrapAlgorithm.AES_KW, b"w" * 40))
    salt = os.urandom(container.SALT_SIZE)
    derived = container._derive(key.dek, salt)
    plain = b"version one" * 100
    fields = dict(header_length=0, cipher=1, mac=1, unit_size=4096, generation=3, plaintext_length=len(plain),
                  salt=salt, key_check=derived.key_check, label="log:old.log", provider_id="p", key_id="k",
                  wrap_algorithm=1, wrapped_dek=b"w" * 40)
    fields["header_length"] = len(container._HEADER_V1.build(fields))
    raw_header = container._HEADER_V1.build(fields)
    body = derived.xts.encrypt_units(0, plain + bytes(-len(plain) % 16), 4096)
    mac = hmac.new(derived.mac_key, raw_header + body, hashlib.sha256).digest()
    header = container.parse_header(raw_header + body + mac)
    assert (header.version, header.vm_id, header.generation) == (1, "", 3)
    assert container.decrypt_bytes(raw_header + body + mac, key) == plain


# ----------------------------------------------------------------------------- 3. one lock per VM


def _wait_until_folded(journal: Path, timeout: float = 60.0) -> None:
    """Wait until a served vTPM's journal holds no record (it folds them after a few idle seconds)."""
    import time

    from vtpm.journal import RECORDS_OFFSET

    deadline = time.monotonic() + timeout
    while not journal.exists() or journal.read_bytes()[RECORDS_OFFSET:RECORDS_OFFSET + 12].strip(b"\0"):
        assert time.monotonic() < deadline, "the served vTPM never folded its journal while idle"
        time.sleep(0.1)


def test_operations_are_refused_while_the_vtpm_runs(tmp_path: Path, home: Path, vtpm_vm: Path, vmcrypt_cli) -> None:
    vmx = vtpm_vm / "vm1.vmx"
    with start_vtpm(["--vm", str(vmx), "--startup-clear"], tmp_path / "log") as tpm:
        _wait_until_folded(vtpm_vm / "vm1.nvram.journal")  # the server's own idle fold is not under test
        before = snapshot(vtpm_vm)
        for args in (["rekey", "--deep", str(vtpm_vm)], ["rekey", str(vtpm_vm)], ["decrypt", str(vtpm_vm)],
                     ["encrypt", "--disks", str(vtpm_vm)], ["backup", str(vtpm_vm), str(tmp_path / "b.tar")],
                     ["ca", "reissue-ek", str(vtpm_vm)]):
            refused(vmcrypt_cli(*args), "the VM's vTPM is running (powered on)")
            assert snapshot(vtpm_vm) == before, args
        assert not (tmp_path / "b.tar").exists()
        tools(tpm, "tpm2_nvdefine", "0x1500074", "-C", "o", "-s", "3", "-a", "ownerread|ownerwrite")
        tools(tpm, "tpm2_nvwrite", "0x1500074", "-C", "o", "-i", "-", stdin=b"YES")
    with start_vtpm(["--vm", str(vmx), "--startup-clear"], tmp_path / "log2") as tpm:  # still opens: same key
        tools(tpm, "tpm2_nvread", "0x1500074", "-C", "o", "-o", str(tmp_path / "nv"))
    assert (tmp_path / "nv").read_bytes() == b"YES"
    vmcrypt_cli("rekey", "--deep", str(vtpm_vm), check=True)  # powered off: allowed

    # while an operation holds the VM, the vTPM does not start
    with lock_vm(VmHome(vmx), "rekey"):
        before = snapshot(vtpm_vm)
        refused(serve_once(vmx, home), "another operation", "in progress")
        assert snapshot(vtpm_vm) == before
    with start_vtpm(["--vm", str(vmx)], tmp_path / "log3"):
        with pytest.raises(VmBusyError, match="vTPM is running"):
            lock_vm(VmHome(vmx), "snapshot")


# ----------------------------------------------------------------------------- 4. leftovers


def test_stale_temp_copies_are_removed_at_the_next_open(tmp_path: Path, home: Path, vtpm_vm: Path) -> None:
    nvram = vtpm_vm / "vm1.nvram"
    for suffix in ("0a1b2c3d4e5f", "ffeeddccbbaa"):  # what SIGKILLed writers leave: whole older copies
        shutil.copyfile(nvram, vtpm_vm / f".vmcrypt-tmp-vm1.nvram-{suffix}")
    with start_vtpm(["--vm", str(vtpm_vm / "vm1.vmx"), "--startup-clear"], tmp_path / "log"):
        assert not list(vtpm_vm.glob(".vmcrypt-tmp-*"))


# ----------------------------------------------------------------------------- 5. inventory and configuration files


@pytest.fixture
def managed_home(tmp_path: Path, home: Path, vmcrypt_cli) -> Path:
    env = {"VMCRYPT_PASSWORD": CLI_PASSWORD}
    vmcrypt_cli("inventory", "init", "--admin", "admin", env=env, check=True)
    vmcrypt_cli("--user", "admin", "inventory", "datastore-add", "ds1", str(tmp_path / "ds1"), env=env, check=True)
    vmcrypt_cli("--user", "admin", "vm", "create", str(tmp_path / "ds1" / "vm1"), env=env, check=True)
    return home


def _files_of(*directories: Path) -> dict[str, bytes]:
    """Everything but SQLite's -wal/-shm side files (a reader may create and remove them)."""
    found = {}
    for directory in directories:
        for name, data in snapshot(directory).items():
            if not name.endswith(("-wal", "-shm")):
                found[f"{directory.name}/{name}"] = data
    return found


def _drop_audit(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute("DROP TABLE audit")


@pytest.mark.parametrize("damage", ["empty", "truncated", "random bytes", "table dropped"])
def test_a_damaged_inventory_is_refused(tmp_path: Path, managed_home: Path, vmcrypt_cli, damage: str) -> None:
    db = managed_home / "inventory.db"
    if damage == "table dropped":
        _drop_audit(db)
    with sqlite3.connect(db) as connection:  # fold the WAL in, so the file is the whole inventory
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if damage == "empty":
        db.write_bytes(b"")
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    elif damage == "random bytes":
        db.write_bytes(os.urandom(db.stat().st_size))
    before = _files_of(managed_home, tmp_path / "ds1")
    reason = {"empty": "is empty (0 bytes)", "truncated": "inventory.db", "random bytes": "inventory.db",
              "table dropped": "missing table audit"}[damage]
    refused(vmcrypt_cli("--user", "admin", "vm", "list", env={"VMCRYPT_PASSWORD": CLI_PASSWORD}), str(db), reason)
    refused(vmcrypt_cli("inventory", "init", "--admin", "eve", env={"VMCRYPT_PASSWORD": "evil"}), str(db), reason)
    assert _files_of(managed_home, tmp_path / "ds1") == before


def test_init_never_recreates_and_commands_do_not_create(tmp_path: Path, home: Path, vmcrypt_cli) -> None:
    absent = vmcrypt_cli("--user", "admin", "vm", "list", env={"VMCRYPT_PASSWORD": CLI_PASSWORD})
    refused(absent, "there is no inventory", "inventory init")
    assert not (home / "inventory.db").exists()
    (home / "inventory.db").write_bytes(b"")  # `: > inventory.db`
    refused(vmcrypt_cli("inventory", "init", "--admin", "eve", env={"VMCRYPT_PASSWORD": "x"}),
            "is empty (0 bytes)", "never re-created")
    assert (home / "inventory.db").read_bytes() == b""
    (home / "inventory.db").unlink()
    vmcrypt_cli("inventory", "init", "--admin", "admin", env={"VMCRYPT_PASSWORD": CLI_PASSWORD}, check=True)
    assert (home / "inventory.db").stat().st_mode & 0o777 == 0o600
    assert not list(home.glob(".inventory.db.creating-*"))


@pytest.mark.parametrize("config", [{"default": 5, "providers": []}, {"default": None, "providers": {}},
                                    {"default": None, "providers": [{"provider_id": 1, "name": "n", "kind": "native",
                                                                     "settings": {}}]},
                                    [], None, "text"])
def test_providers_json_with_wrong_types(tmp_path: Path, home: Path, vmcrypt_cli, config) -> None:
    vm = tmp_path / "vm1"
    vmcrypt_cli("vm", "create", str(vm), check=True)
    (home / "providers.json").write_text(json.dumps(config))
    before = _files_of(home, vm)
    refused(vmcrypt_cli("provider", "list"), "providers.json", "provider configuration is unreadable")
    refused(vmcrypt_cli("encrypt", str(vm)), "providers.json")
    assert _files_of(home, vm) == before


@pytest.mark.parametrize("content", ["[]", "null", '{"format": 2}', '{"format": 1, "operation": 5, "target": null, '
                                     '"include_disks": false, "started": "x"}', "not json"])
def test_a_malformed_journal(encrypted_vm: Path, vmcrypt_cli, content: str) -> None:
    (encrypted_vm / ".vm1.vmcrypt-journal").write_text(content)
    before = snapshot(encrypted_vm)
    for args in (["decrypt", str(encrypted_vm)], ["encrypt", str(encrypted_vm)], ["describe", str(encrypted_vm)]):
        refused(vmcrypt_cli(*args), ".vm1.vmcrypt-journal", "the operation journal is unreadable")
    assert snapshot(encrypted_vm) == before


@pytest.mark.parametrize("change", [{"vm": 5}, {"vm": "../x"}, {"files": "x"}, {"files": [{"name": "a"}]},
                                    {"encrypted": "yes"}, {"format": None}])
def test_a_malformed_backup_manifest(tmp_path: Path, managed_home: Path, vmcrypt_cli, change: dict) -> None:
    env = {"VMCRYPT_PASSWORD": CLI_PASSWORD}
    archive = tmp_path / "vm1.tar"
    vmcrypt_cli("--user", "admin", "backup", "vm1", str(archive), env=env, check=True)
    forged = tmp_path / "forged.tar"
    with tarfile.open(archive) as src, tarfile.open(forged, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), **change}).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    vmcrypt_cli("--user", "admin", "vm", "delete", "vm1", env=env, check=True)
    before = _files_of(tmp_path / "ds1")
    refused(vmcrypt_cli("backup", "verify", str(forged)), str(forged), "the manifest is not readable")
    refused(vmcrypt_cli("--user", "admin", "restore", str(forged), "--datastore", "ds1", env=env),
            "the manifest is not readable")
    assert _files_of(tmp_path / "ds1") == before


# ----------------------------------------------------------------------------- 6. the vTPM child's environment


def test_the_vtpm_process_does_not_inherit_the_password(tmp_path: Path, managed_home: Path, vmcrypt_cli) -> None:
    env = {"VMCRYPT_PASSWORD": CLI_PASSWORD, "SOME_TOKEN": "secret-token"}
    vmcrypt_cli("--user", "admin", "vtpm", "add", str(tmp_path / "ds1" / "vm1"), env=env, check=True)
    on = json.loads(vmcrypt_cli("--user", "admin", "vm", "power-on", "vm1", "--json", env=env, check=True).stdout)
    try:
        m = Management(managed_home, create_inventory=False)
        pid = m.inventory.vm("vm1").vtpm_pid
        m.close()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
        assert "VMCRYPT_PASSWORD" not in names and "SOME_TOKEN" not in names
        assert b"VMCRYPT_HOME=" + str(managed_home).encode() in environ
        assert not any(CLI_PASSWORD.encode() == entry.split(b"=", 1)[-1] for entry in environ)
        _tpm(on["vtpm_port"], "tpm2_startup", "-c")  # and it works with what it was given
    finally:
        vmcrypt_cli("--user", "admin", "vm", "power-off", "vm1", env=env, check=True)
