"""The inventory's two databases: SQLite in the home and PostgreSQL by URL, one schema, one migration path.

An inventory.db made by builds before Alembic (their DDL and ``PRAGMA
user_version`` below, verbatim) opens and migrates forward with its data. On
PostgreSQL (a real server, support.postgres) the open is as strict as on
SQLite: a foreign, newer or tampered database is refused saying why, the audit
log refuses UPDATE, DELETE and TRUNCATE. The URL is kept in the home without
its password, which lives apart in a 0600 file and is never shown.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from vmcrypt import inventory_db
from vmcrypt.inventory import ROOT, Inventory, InventoryError
from vmcrypt.inventory_schema import latest
from vmcrypt.management import Management
from vmcrypt.power import PowerState
from vmcrypt.rbac import BUILTIN_ROLES, Privilege

# what earlier builds ran to make an inventory (schema versions 1 and 2)
LEGACY_MIGRATIONS = [
    """
    CREATE TABLE datastores (name TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE);
    CREATE TABLE hosts (name TEXT PRIMARY KEY, trusted INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE vms (
        name TEXT PRIMARY KEY, vmx_path TEXT NOT NULL UNIQUE,
        datastore TEXT NOT NULL REFERENCES datastores(name),
        hw_version INTEGER NOT NULL, firmware TEXT NOT NULL,
        encrypted INTEGER NOT NULL, provider_id TEXT, key_id TEXT, vtpm INTEGER NOT NULL,
        power_state TEXT NOT NULL DEFAULT 'off', vtpm_pid INTEGER, vtpm_port INTEGER);
    CREATE TABLE users (name TEXT PRIMARY KEY, salt BLOB NOT NULL, hash BLOB NOT NULL, params TEXT NOT NULL);
    CREATE TABLE groups (name TEXT PRIMARY KEY);
    CREATE TABLE group_members (grp TEXT NOT NULL REFERENCES groups(name), user TEXT NOT NULL REFERENCES users(name),
                                PRIMARY KEY (grp, user));
    CREATE TABLE roles (name TEXT PRIMARY KEY, privileges TEXT NOT NULL, builtin INTEGER NOT NULL);
    CREATE TABLE permissions (
        entity_type TEXT NOT NULL, entity TEXT NOT NULL, principal TEXT NOT NULL, is_group INTEGER NOT NULL,
        role TEXT NOT NULL REFERENCES roles(name), propagate INTEGER NOT NULL,
        PRIMARY KEY (entity_type, entity, principal, is_group));
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
        entity TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE console_tickets (digest BLOB PRIMARY KEY, vm TEXT NOT NULL, user TEXT NOT NULL, expires TEXT NOT NULL);
    """,
    """
    ALTER TABLE vms ADD COLUMN nvram_generation INTEGER;
    """,
]


def _legacy_inventory(home: Path, version: int) -> Path:
    """An inventory.db as a build before Alembic left it, at schema ``version``, with a user, a VM and an audit row."""
    path = home / inventory_db.DB_FILE
    db = sqlite3.connect(path, isolation_level=None)
    for script in LEGACY_MIGRATIONS[:version]:
        db.executescript(script)
    for role in BUILTIN_ROLES.values():
        db.execute("INSERT INTO roles VALUES (?, ?, 1)", (role.name, '["System.View"]'))
    db.execute("INSERT INTO groups VALUES ('TrustedAdmins')")
    db.execute("INSERT INTO users VALUES ('old', x'00', x'00', '{}')")
    db.execute("INSERT INTO datastores VALUES ('ds', '/srv/ds')")
    db.execute("INSERT INTO vms (name, vmx_path, datastore, hw_version, firmware, encrypted, vtpm) "
               "VALUES ('vm1', '/srv/ds/vm1/vm1.vmx', 'ds', 14, 'efi', 0, 0)")
    db.execute("INSERT INTO audit (at, user, action, entity, outcome, detail) VALUES ('t', 'old', 'x', 'y', 'ok', '')")
    db.execute(f"PRAGMA user_version = {version}")
    db.close()
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("version", [1, 2])
def test_an_inventory_of_an_earlier_build_migrates_forward(home: Path, version: int) -> None:
    path = _legacy_inventory(home, version)
    with Inventory(home, create=False) as inv:
        assert inv.schema_version == latest() == 3
        assert inv.users() == ["old"]
        assert inv.vm("vm1").nvram_generation is None and inv.vm("vm1").datastore == "ds"
        assert [e.action for e in inv.audit_log()] == ["x"]
        inv.audit("old", "after", "", "ok")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            inv.db.execute("DELETE FROM audit")
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT version_num FROM alembic_version").fetchone() == ("0003",)
    assert raw.execute("PRAGMA user_version").fetchone() == (3,)
    assert raw.execute("SELECT count(*) FROM sessions").fetchone() == (0,)  # made by migration 0003
    raw.close()
    with Inventory(home, create=False) as inv:  # and opens again, as it is now
        assert [e.action for e in inv.audit_log()] == ["x", "after"]


def test_a_tampered_inventory_of_an_earlier_build_is_refused(home: Path) -> None:
    path = _legacy_inventory(home, 2)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER audit_no_delete")
    db.close()
    with pytest.raises(InventoryError, match="missing trigger audit_no_delete"):
        Inventory(home, create=False)


# ----------------------------------------------------------------------------- PostgreSQL


def _superuser(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)


def test_postgresql_inventory_is_strict_and_append_only(home: Path, tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(InventoryError, match="there is no inventory"):
        Inventory(home, create=False, url=pg_url)
    with Inventory(home, url=pg_url) as inv:
        assert inv.dialect == "postgresql" and inv.schema_version == latest()
        assert "***" in inv.where and inv.database.url.password not in inv.where
        inv.add_user("ann", "pw")
        inv.add_datastore("ds", tmp_path / "ds")
        inv.add_group("ops")
        inv.add_to_group("ops", "ann")
        inv.grant(ROOT, "ops", "Administrator", group=True)
        inv.grant(("datastore", "ds"), "ops", "No Cryptography Administrator", group=True)
        assert Privilege.CRYPTO_ACCESS not in inv.privileges("ann", ("datastore", "ds"))
        inv.grant(("datastore", "ds"), "ann", "Administrator")  # the user's own beats the group's
        assert Privilege.CRYPTO_ACCESS in inv.privileges("ann", ("datastore", "ds"))
        with inv.operation():  # a broken constraint inside a transaction: refused, and the transaction goes on
            with pytest.raises(InventoryError, match="already exists"):
                inv.add_user("ann", "other")
            inv.audit("ann", "probe", "", "ok")
        assert [e.action for e in inv.audit_log()] == ["probe"]
    with _superuser(pg_url) as db:
        for statement in ("DELETE FROM audit", "UPDATE audit SET outcome = 'x'", "TRUNCATE audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                db.execute(statement)
        db.execute("ALTER TABLE audit DISABLE TRIGGER audit_no_truncate")
    with pytest.raises(InventoryError, match="disabled trigger audit_no_truncate"):
        Inventory(home, create=False, url=pg_url)
    with _superuser(pg_url) as db:
        db.execute("ALTER TABLE audit ENABLE TRIGGER audit_no_truncate")
        db.execute("DROP TRIGGER audit_no_delete ON audit")
    with pytest.raises(InventoryError, match="missing trigger audit_no_delete"):
        Inventory(home, create=False, url=pg_url)


@pytest.mark.parametrize("damage", ["newer", "roles", "foreign"])
def test_postgresql_refuses_a_newer_tampered_or_foreign_database(home: Path, pg_url: str, damage: str) -> None:
    if damage == "foreign":
        with _superuser(pg_url) as db:
            db.execute("CREATE TABLE accounts (id integer)")
    else:
        Inventory(home, url=pg_url).close()
        with _superuser(pg_url) as db:
            db.execute("UPDATE alembic_version SET version_num = '0099'" if damage == "newer"
                       else "DELETE FROM roles WHERE name = 'Administrator'")
    reason = {"newer": "schema version 99; this build knows up to 3", "roles": "lacks the built-in roles Administrator",
              "foreign": "a PostgreSQL database but not an inventory"}[damage]
    for create in (False, True):
        with pytest.raises(InventoryError, match=reason) as refused:
            Inventory(home, create=create, url=pg_url)
        assert "***" in str(refused.value) and pg_url.split(":")[2].split("@")[0] not in str(refused.value)


def test_a_vm_row_lock_holds_a_second_process_until_the_first_commits(home: Path, tmp_path: Path,
                                                                       pg_url: str) -> None:
    """Two connections (as two service processes have): the second operation on a VM waits for the first."""
    m = Management(home, db_url=pg_url)
    m.inventory.add_user("admin", "pw")
    m.inventory.grant(ROOT, "admin", "Administrator")
    m.inventory.add_datastore("ds", tmp_path / "ds")
    m.login("admin", "pw").create_vm("ds", "vm")
    other = Inventory(home, url=pg_url, create=False)
    seen: list[str] = []

    def second() -> None:
        with other.operation():
            seen.append(other.vm("vm", lock=True).power_state.value)
    try:
        with m.inventory.operation():
            record = m.inventory.vm("vm", lock=True)
            waiting = threading.Thread(target=second)
            waiting.start()
            time.sleep(0.5)
            assert seen == [] and waiting.is_alive()  # blocked on the row
            m.inventory.put_vm(replace(record, power_state=PowerState.ON))
        waiting.join(10)
        assert seen == ["on"]  # it read what the first committed, not what it saw before
    finally:
        other.close()
        m.close()


# ----------------------------------------------------------------------------- the URL and its password


def test_init_with_a_db_url_records_it_without_the_password(home: Path, postgres, vmcrypt_cli) -> None:
    url = postgres.url(postgres.create_database())
    result = vmcrypt_cli("--json", "inventory", "init", "--admin", "admin", "--db-url", url,
                         env={"VMCRYPT_PASSWORD": "first-secret-pw1"})
    assert result.returncode == 0, result.stderr
    assert postgres.password not in result.stdout + result.stderr and "***" in result.stdout
    recorded = (home / inventory_db.URL_FILE).read_text()
    assert postgres.password not in recorded and f":{postgres.port}/" in recorded
    secret = home / inventory_db.PASSWORD_FILE
    assert secret.read_text().strip() == postgres.password and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not (home / inventory_db.DB_FILE).exists()
    with Inventory(home, create=False) as inv:  # the home alone names it now
        assert inv.dialect == "postgresql" and inv.users() == ["admin"]
    again = vmcrypt_cli("inventory", "init", "--admin", "eve", "--db-url", postgres.url("postgres"),
                        env={"VMCRYPT_PASSWORD": "eve-password-12"})
    assert again.returncode == 1 and "this home's inventory is at" in again.stderr
    assert postgres.password not in again.stderr
    os.chmod(secret, 0o644)
    with pytest.raises(inventory_db.DatabaseUrlError, match="mode 0600"):
        Inventory(home, create=False)


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url", "sqlite://"])
def test_a_bad_db_url_is_refused_clearly(home: Path, url: str) -> None:
    with pytest.raises(inventory_db.DatabaseUrlError, match="inventory"):
        Inventory(home, url=url)
    assert list(home.iterdir()) == []


def test_the_environment_names_the_database(home: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not inventory_db.configured(home)
    monkeypatch.setenv(inventory_db.ENV_DB_URL, pg_url)
    assert inventory_db.configured(home)
    with Inventory(home) as inv:
        assert inv.dialect == "postgresql" and inv.database.source == "environment"
    assert not (home / inventory_db.DB_FILE).exists() and not (home / inventory_db.URL_FILE).exists()
