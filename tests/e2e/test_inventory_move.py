"""Moving an SQLite inventory to PostgreSQL: `vmcrypt inventory move-to --db-url URL`.

A populated inventory (users, a group, a custom role, user and group
permissions, datastores, VMs with and without a vTPM, refusals and successes in
the audit log, a live session) is moved to an empty database of a real
PostgreSQL (support.postgres); every table holds the same rows afterwards (the
audit log in the same order), the SQLite file is kept renamed (0600), and the
management tests' lifecycle (test_management: a served vTPM, power off and on,
refusals) passes on the moved inventory, its new audit rows after the old ones.
Refused, with nothing changed: a target that is not empty, a home whose service
is running, a home already on PostgreSQL; a URL that is not PostgreSQL is a
usage error.
"""

from __future__ import annotations

import datetime
import json
import stat
from pathlib import Path

import pytest

from support.service import start_service
from test_management import PASSWORDS
from test_management import test_lifecycle_with_served_vtpm as lifecycle
from vmcrypt import inventory_db
from vmcrypt.gate import PermissionDenied
from vmcrypt.inventory import ROOT, Inventory
from vmcrypt.inventory_move import COPY_ORDER, KEPT_SUFFIX, _read
from vmcrypt.management import Management
from vmcrypt.rbac import Privilege


def _populate(home: Path, tmp_path: Path) -> None:
    m = Management(home)
    try:
        inv = m.inventory
        for user, password in PASSWORDS.items():
            inv.add_user(user, password)
        inv.grant(ROOT, "admin", "Administrator")
        inv.grant(ROOT, "nocrypto", "No Cryptography Administrator")
        inv.grant(ROOT, "reader", "Read-only")
        inv.add_group("operators")
        inv.add_to_group("operators", "reader")
        inv.add_role("Powerer", {Privilege.SYSTEM_VIEW, Privilege.POWER_ON})
        inv.add_datastore("ds1", tmp_path / "ds1")
        inv.add_datastore("ds2", tmp_path / "ds2")
        admin = m.login("admin", PASSWORDS["admin"])
        admin.create_vm("ds1", "enc")
        admin.add_vtpm("enc")
        admin.create_vm("ds1", "plain")
        inv.grant(("vm", "plain"), "operators", "Powerer", group=True)
        with pytest.raises(PermissionDenied):
            m.login("reader", PASSWORDS["reader"]).power_on("enc")
        inv.open_session("admin", datetime.timedelta(minutes=5))
    finally:
        m.close()


def _contents(home: Path, url: str | None = None) -> dict[str, list[tuple]]:
    with Inventory(home, create=False, url=url) as inv, inv.operation() as conn:
        tables = _read(conn)
    return {name: sorted(tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows)
            if name != "audit" else [tuple(r) for r in sorted(rows, key=lambda r: r.id)]
            for name, rows in tables.items()}


def test_an_sqlite_inventory_moves_to_postgresql_and_works_there(home: Path, tmp_path: Path, pg_url: str,
                                                                  postgres, vmcrypt_cli) -> None:
    _populate(home, tmp_path)
    before = _contents(home)
    assert all(before[name] for name in ("users", "groups", "group_members", "roles", "permissions", "vms",
                                         "audit", "sessions"))

    moved = vmcrypt_cli("--json", "inventory", "move-to", "--db-url", pg_url)
    assert moved.returncode == 0, moved.stderr
    result = json.loads(moved.stdout)
    assert postgres.password not in moved.stdout + moved.stderr and "***" in result["inventory"]
    assert list(result["tables"]) == list(COPY_ORDER)
    assert {name: t["rows"] for name, t in result["tables"].items()} == {n: len(r) for n, r in before.items()}

    kept = Path(result["kept"])
    assert kept.parent == home and kept.name.startswith(inventory_db.DB_FILE + KEPT_SUFFIX)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert not (home / inventory_db.DB_FILE).exists() and (home / inventory_db.URL_FILE).is_file()
    assert _contents(home) == before  # the home now names PostgreSQL: the same rows, the audit log in order
    assert inventory_db.resolve(home).dialect == "postgresql"

    m = Management(home, create_inventory=False)
    try:
        old_audit = len(before["audit"])
        lifecycle(m, tmp_path)
        audit = m.inventory.audit_log()
        assert [(e.at, e.user, e.action, e.entity, e.outcome, e.detail) for e in audit[:old_audit]] == \
            [row[1:] for row in before["audit"]]
        assert [(e.action, e.outcome) for e in audit[old_audit:old_audit + 2]] == [("power on", "ok"),
                                                                                ("power on", "failed")]
        with pytest.raises(PermissionDenied, match="Cryptographer"):  # the group's role on 'plain' came along
            m.login("reader", PASSWORDS["reader"]).download("enc", "enc.nvram")
        assert m.login("reader", PASSWORDS["reader"]).power_on("plain").power_state.value == "on"
        m.login("admin", PASSWORDS["admin"]).power_off("plain")
    finally:
        m.close()

    again = vmcrypt_cli("inventory", "move-to", "--db-url", pg_url)
    assert again.returncode == 1 and "already at" in again.stderr and postgres.password not in again.stderr


@pytest.mark.slow
def test_a_move_is_refused_with_nothing_changed(home: Path, tmp_path: Path, postgres, vmcrypt_cli) -> None:
    _populate(home, tmp_path)
    before = _contents(home)
    busy_url = postgres.url(postgres.create_database())
    with postgres.connect(busy_url.rsplit("/", 1)[1]) as db:
        db.execute("CREATE TABLE something (x int)")
    refused = vmcrypt_cli("inventory", "move-to", "--db-url", busy_url)
    assert refused.returncode == 1 and "is not empty" in refused.stderr
    with postgres.connect(busy_url.rsplit("/", 1)[1]) as db:  # nothing was made there
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (1,)

    empty_url = postgres.url(postgres.create_database())
    with start_service(home, log=tmp_path / "service.log"):
        running = vmcrypt_cli("inventory", "move-to", "--db-url", empty_url)
    assert running.returncode == 1 and "is running" in running.stderr and "stop it first" in running.stderr

    usage = vmcrypt_cli("inventory", "move-to", "--db-url", f"sqlite:///{tmp_path / 'other.db'}")
    assert usage.returncode == 2 and "PostgreSQL only" in usage.stderr
    assert (home / inventory_db.DB_FILE).exists() and not (home / inventory_db.URL_FILE).exists()
    assert _contents(home) == before
    with postgres.connect(empty_url.rsplit("/", 1)[1]) as db:
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
