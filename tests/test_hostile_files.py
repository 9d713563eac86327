"""Files that defend themselves: what a hostile operator with write access to the datastore
and the management home tries, and what each attempt now gets.

Inputs tried (each must be refused with one clear ``error:`` line naming the file and why, no
traceback, every file left byte for byte as it was):

- the inventory: emptied (and ``inventory init`` over it), truncated, random bytes, a table dropped;
- ``providers.json`` with wrong types, a list, ``null`` or a string;
- the vTPM child process's environment (no ``$VMCRYPT_PASSWORD``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import snapshot
from vmcrypt.management import Management


def refused(result, *phrases: str) -> str:
    """Exit 1, exactly one `error:` line holding every phrase, no traceback; returns the line."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"
    return errors[0]


def _tpm(port: int, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}"}
    done = subprocess.run(args, env=env, input=stdin, capture_output=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr.decode()
    return done


# ----------------------------------------------------------------------------- 5. inventory and configuration files


@pytest.fixture
def managed_home(tmp_path: Path, home: Path, vmcrypt_cli) -> Path:
    env = {"VMCRYPT_PASSWORD": "pw"}
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
    refused(vmcrypt_cli("--user", "admin", "vm", "list", env={"VMCRYPT_PASSWORD": "pw"}), str(db), reason)
    refused(vmcrypt_cli("inventory", "init", "--admin", "eve", env={"VMCRYPT_PASSWORD": "evil"}), str(db), reason)
    assert _files_of(managed_home, tmp_path / "ds1") == before


def test_init_never_recreates_and_commands_do_not_create(tmp_path: Path, home: Path, vmcrypt_cli) -> None:
    absent = vmcrypt_cli("--user", "admin", "vm", "list", env={"VMCRYPT_PASSWORD": "pw"})
    refused(absent, "there is no inventory", "inventory init")
    assert not (home / "inventory.db").exists()
    (home / "inventory.db").write_bytes(b"")  # `: > inventory.db`
    refused(vmcrypt_cli("inventory", "init", "--admin", "eve", env={"VMCRYPT_PASSWORD": "x"}),
            "is empty (0 bytes)", "never re-created")
    assert (home / "inventory.db").read_bytes() == b""
    (home / "inventory.db").unlink()
    vmcrypt_cli("inventory", "init", "--admin", "admin", env={"VMCRYPT_PASSWORD": "pw"}, check=True)
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


# ----------------------------------------------------------------------------- 6. the vTPM child's environment


def test_the_vtpm_process_does_not_inherit_the_password(tmp_path: Path, managed_home: Path, vmcrypt_cli) -> None:
    env = {"VMCRYPT_PASSWORD": "pw", "SOME_TOKEN": "secret-token"}
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
        assert not any(b"pw" == entry.split(b"=", 1)[-1] for entry in environ)
        _tpm(on["vtpm_port"], "tpm2_startup", "-c")  # and it works with what it was given
    finally:
        vmcrypt_cli("--user", "admin", "vm", "power-off", "vm1", env=env, check=True)
