"""Contention in the inventory's database: operations run again, sessions shared by service processes.

A real deadlock on a real PostgreSQL (support.postgres): another connection
locks VM ``b`` then VM ``a`` while the operation locks ``a`` then ``b``; the
database aborts the operation's transaction (40P01), it is run again and
succeeds, and the audit log holds it once. A serialization failure that never
goes away exhausts the retries: the error names the cause and one ``failed`` row
is audited; an operation that had already acted outside the database is not run
again. On SQLite a writer holding the database past the busy timeout makes
``database is locked``, run again in the same way. Sessions: two service
processes on one PostgreSQL accept each other's tokens, and a logout on one ends
the session on both.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from support.service import start_service
from vmcrypt import inventory as inventory_module
from vmcrypt import inventory_db
from vmcrypt.gate import INVENTORY_ROOT, datastore_target
from vmcrypt.inventory import ROOT, Inventory, InventoryBusy
from vmcrypt.management import Management
from vmcrypt.rbac import Operation
from vmcrypt.service_client import ServiceClient, ServiceError

PASSWORD = "retry-password-1"
RAISE_SERIALIZATION_FAILURE = ("DO $$ BEGIN RAISE EXCEPTION 'could not serialize access' "
                               "USING ERRCODE = 'serialization_failure'; END $$")


def _management(home: Path, tmp_path: Path, db_url: str | None) -> Management:
    m = Management(home, db_url=db_url)
    m.inventory.add_user("admin", PASSWORD)
    m.inventory.grant(ROOT, "admin", "Administrator")
    m.inventory.add_user("viewer", PASSWORD)
    m.inventory.add_datastore("ds", tmp_path / "ds")
    admin = m.login("admin", PASSWORD)
    admin.create_vm("ds", "a")
    admin.create_vm("ds", "b")
    return m


def _rows(m: Management, action: str) -> list[tuple[str, str]]:
    return [(e.outcome, e.detail) for e in m.inventory.audit_log() if e.action == action]


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_real_deadlock_is_run_again_and_audited_once(home: Path, tmp_path: Path, postgres, pg_url: str) -> None:
    m = _management(home, tmp_path, pg_url)
    holder = postgres.connect(_database(pg_url))
    watcher = postgres.connect(_database(pg_url))
    holds_b = threading.Event()
    errors: list[BaseException] = []

    def other_connection() -> None:
        """Locks b, then (once the operation waits for b) a: the opposite order. Its own deadlock check is
        put off, so the database picks the operation's transaction to abort."""
        try:
            holder.execute("BEGIN")
            holder.execute("SET LOCAL deadlock_timeout = '60s'")
            holder.execute("SELECT name FROM vms WHERE name = 'b' FOR UPDATE")
            holds_b.set()
            deadline = time.monotonic() + 20
            while not watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                                      "wait_event_type = 'Lock'", (_database(pg_url),)).fetchone()[0]:
                assert time.monotonic() < deadline, "the operation never waited for b"
                time.sleep(0.02)
            holder.execute("SELECT name FROM vms WHERE name = 'a' FOR UPDATE")  # the cycle: one of us is aborted
            holder.execute("COMMIT")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            holder.execute("ROLLBACK")

    attempts: list[int] = []

    def act() -> str:
        attempts.append(len(attempts) + 1)
        m.inventory.vm("a", lock=True)
        m.inventory.vm("b", lock=True)
        m.inventory.grant(("vm", "a"), "viewer", "Read-only")
        return "granted"

    thread = threading.Thread(target=other_connection)
    try:
        thread.start()
        assert holds_b.wait(10)
        assert m.gate.run("admin", Operation.GRANT, INVENTORY_ROOT, act, "viewer on a") == "granted"
        thread.join(30)
        assert not errors, errors
        assert attempts == [1, 2]  # aborted once by the deadlock, then done
        assert "deadlock detected" in postgres.log_text()
        assert _rows(m, Operation.GRANT.value) == [("ok", "viewer on a")]
        assert ("vm", "a", "viewer", False, "Read-only", True) in m.inventory.permissions()
    finally:
        thread.join(30)
        holder.close()
        watcher.close()
        m.close()


def test_retries_run_out_with_the_cause_named_and_one_audit_row(home: Path, tmp_path: Path, pg_url: str) -> None:
    m = _management(home, tmp_path, pg_url)
    tries: list[str] = []

    def serialization_failure(what: str):  # noqa: ANN202
        def act() -> None:
            tries.append(what)
            m.inventory.grant(("vm", "b"), "viewer", "Read-only")  # rolled back with the attempt
            with m.inventory.operation() as conn:
                conn.exec_driver_sql(RAISE_SERIALIZATION_FAILURE)
        return act
    try:
        with pytest.raises(InventoryBusy, match=r"serialization failure\): gave up after 5 attempts") as busy:
            m.gate.run("admin", Operation.GRANT, INVENTORY_ROOT, serialization_failure("grant"))
        assert busy.value.attempts == inventory_module.ATTEMPTS == 5 and tries == ["grant"] * 5
        failed = _rows(m, Operation.GRANT.value)
        assert len(failed) == 1 and failed[0][0] == "failed" and "serialization failure" in failed[0][1]
        assert not [p for p in m.inventory.permissions() if p[1] == "b"]  # nothing of any attempt committed

        # an operation that acts outside the database is not run again once it began
        with pytest.raises(InventoryBusy, match="already changed files"):
            m.gate.run("admin", Operation.ADD_DATASTORE, datastore_target("ds"), serialization_failure("add"))
        assert tries.count("add") == 1
        assert [o for o, _ in _rows(m, Operation.ADD_DATASTORE.value)] == ["failed"]
    finally:
        m.close()


def test_a_locked_sqlite_inventory_is_waited_for_and_run_again(home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory_db, "SQLITE_BUSY_MS", 30)  # the lock outlasts the busy timeout
    m = _management(home, tmp_path, None)
    waits: list[float] = []
    real_backoff = inventory_module.backoff
    monkeypatch.setattr(inventory_module, "backoff", lambda n: waits.append(real_backoff(n)) or 0.15)
    other = sqlite3.connect(home / inventory_db.DB_FILE, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the database
    release = threading.Timer(0.4, lambda: other.execute("COMMIT"))
    try:
        release.start()
        m.login("admin", PASSWORD).grant(("vm", "a"), "viewer", "Read-only")
        assert len(waits) >= 1  # it was locked, then run again
        assert [o for o, _ in _rows(m, Operation.GRANT.value)] == ["ok"]
    finally:
        release.join()
        other.close()
        m.close()


@pytest.mark.slow
def test_two_service_processes_share_sessions(home: Path, tmp_path: Path, pg_url: str, vmcrypt_cli) -> None:
    init = vmcrypt_cli("inventory", "init", "--admin", "admin", "--db-url", pg_url, env={"VMCRYPT_PASSWORD": PASSWORD})
    assert init.returncode == 0, init.stderr
    services = [start_service(home, socket_path=home / "run" / f"{n}.sock", log=tmp_path / f"{n}.log")
                for n in ("a", "b")]
    try:
        with ServiceClient(services[0].url) as a, ServiceClient(services[1].url) as b:
            a.login("admin", PASSWORD)
            b.token = a.token  # issued by process A, presented to process B
            assert b.request("GET", "/users")[0]["user"] == "admin"
            with Inventory(home, create=False) as inv, inv.operation() as conn:
                stored = conn.exec_driver_sql("SELECT digest, \"user\" FROM sessions").all()
            assert len(stored) == 1 and a.token.encode() not in bytes(stored[0][0])
            assert b.request("DELETE", "/session")["logged_out"] is True  # logged out on B ...
            with pytest.raises(ServiceError) as ended:
                a.request("GET", "/users")  # ... is logged out on A
            assert ended.value.status == 401
            b.token = a.token = None
    finally:
        for service in services:
            service.stop()
