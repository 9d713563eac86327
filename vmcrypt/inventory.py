"""The vCenter-like inventory: datastores, hosts, VMs, users, groups, roles, permissions, audit.

One schema (``vmcrypt.inventory_schema``, migrated by Alembic) in one of two
databases (``vmcrypt.inventory_db``): SQLite under the management home
(``inventory.db``, mode 0600: the default) or PostgreSQL named by URL, which
several management service processes can share. Permissions follow vSphere: a
permission on an object applies to it and, when ``propagate`` is set, to its
children; the permission nearest to the object wins, and at one level a user's
own permission beats its groups'. The audit log is append-only (triggers refuse
UPDATE and DELETE, and on PostgreSQL TRUNCATE).

``operation()`` makes one transaction of everything an operation writes, its
audit row included; ``vm(name, lock=True)`` locks the VM's row until that
transaction ends (PostgreSQL: ``SELECT ... FOR UPDATE``; SQLite: every
transaction holds the database's write lock from its ``BEGIN IMMEDIATE``), so
concurrent operations on one VM run one after the other, also from two processes.

An SQLite inventory is created once, whole (built under a temporary name, then
linked into place), and never re-created over an existing file: opening refuses
an empty, truncated or damaged file (SQLite integrity check). On both databases
opening refuses one without the inventory's tables, triggers and built-in roles,
or with a newer schema, naming the database and why. Only ``create=True``
(``inventory init``, the API) makes a new one, and only where none exists.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from durable.atomic import fsync_directory
from vmcrypt import inventory_schema as schema
from vmcrypt.errors import VmcryptError
from vmcrypt.inventory_db import DB_FILE, Database, engine, resolve, sqlite_events
from vmcrypt.power import PowerState
from vmcrypt.rbac import BUILTIN_ROLES, Privilege, Role

__all__ = ["DB_FILE", "ROOT", "AuditEntry", "Inventory", "InventoryBusy", "InventoryError", "VmRecord"]

ROOT = ("root", "")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
DATABASE_ERRORS = (sa.exc.SQLAlchemyError, sqlite3.Error)
# a transaction the database gave up on for contention is run again, whole, this many times at most
ATTEMPTS = 5
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0  # seconds: doubled per attempt, then jittered
BUSY_STATES = {"40P01": "deadlock detected", "40001": "serialization failure"}  # PostgreSQL SQLSTATEs
T = TypeVar("T")
LAST_USED_STEP = datetime.timedelta(seconds=30)  # a session's last use is noted to this precision


class InventoryError(VmcryptError):
    """The inventory cannot do what was asked (unknown object, duplicate name, bad login)."""


class InventoryBusy(InventoryError):
    """The database gave up on the operation for contention (deadlock, serialization failure, locked), and it
    could not be run again: retries ran out, or it had already acted outside the database. Nothing of it
    was committed."""

    def __init__(self, cause: str, attempts: int, acted_outside: bool) -> None:
        self.cause = cause
        self.attempts = attempts
        why = ("it had already changed files, so it was not run again" if acted_outside
               else f"gave up after {attempts} attempts")
        super().__init__(f"the inventory database is busy ({cause}): {why}; nothing was changed in the "
                         "inventory, try again")


def busy_cause(exc: BaseException) -> str | None:
    """What made the database give up on a transaction that may succeed when run again; None for other errors."""
    inner = getattr(exc, "orig", None) or exc
    state = getattr(inner, "sqlstate", None)
    if state in BUSY_STATES:
        return BUSY_STATES[state]
    if isinstance(inner, sqlite3.OperationalError) and "database is locked" in str(inner):
        return "database is locked"
    return None


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: exponential, full jitter (two losers do not meet again)."""
    return random.uniform(0, min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class VmRecord:
    """What the inventory holds about one VM: its files and datastore, its key, its vTPM, and its power state with the
    running vTPM's process and port."""

    name: str
    vmx_path: str
    datastore: str
    hw_version: int
    firmware: str
    encrypted: bool
    provider_id: str | None
    key_id: str | None
    vtpm: bool
    power_state: PowerState
    vtpm_pid: int | None
    vtpm_port: int | None
    nvram_generation: int | None = None  # latest generation of the encrypted .nvram under key_id


@dataclass(frozen=True)
class AuditEntry:
    """One row of the management audit log, which the database keeps append-only."""

    at: str
    user: str
    action: str
    entity: str
    outcome: str
    detail: str


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _hash_password(password: str, salt: bytes, params: dict[str, int]) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=params["n"], r=params["r"], p=params["p"], dklen=32)


class Inventory:
    """The inventory of one management home, open on one database connection (use from one thread)."""

    def __init__(self, home: str | os.PathLike[str], *, create: bool = True, url: str | None = None) -> None:
        """Open the inventory of ``home``; ``create``: make a new one if (and only if) there is none.
        ``url``: the database (default: ``$VMCRYPT_DB_URL``, the home's ``inventory.url``, else its SQLite file)."""
        self.home = Path(home)
        self.database: Database = resolve(self.home, url)
        self.path = self.database.sqlite_path
        self.where = str(self.path) if self.path else self.database.shown
        self._depth = 0
        self._outside = False  # the current operation changed something outside the database: no retry
        self.engine = engine(self.database)
        if self.path is not None:
            self.conn = self._open_sqlite(create)
        else:
            self.conn = self._open_server(create)

    # ------------------------------------------------------------------ open

    def _open_sqlite(self, create: bool) -> sa.Connection:
        assert self.path is not None
        if not self.path.exists():
            if not create:
                raise InventoryError(f"there is no inventory in {self.path.parent}: "
                                     "create one with 'vmcrypt inventory init --admin NAME'")
            self._create_sqlite()
        if self.path.stat().st_size == 0:
            raise InventoryError("is empty (0 bytes): it was truncated or replaced. An existing inventory is never "
                                 "re-created (that would drop its users, roles and audit log): restore it from a backup",
                                 self.path)
        conn = self.engine.connect()
        try:
            raw = conn.connection.driver_connection
            problems = [row[0] for row in raw.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise InventoryError(f"is damaged (SQLite integrity check: {problems[0]})", self.path)
            raw.execute("PRAGMA journal_mode = WAL")
            self._check_and_migrate(conn, create=False)
        except DATABASE_ERRORS as exc:
            conn.close()
            raise InventoryError(f"is not a readable inventory ({_reason(exc)})", self.path) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_sqlite(self) -> None:
        """Build a complete new inventory under a temporary name, then link it into place."""
        assert self.path is not None
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.creating-{secrets.token_hex(6)}")
        os.close(os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            made = sqlite_events(sa.create_engine(sa.URL.create("sqlite", database=str(temp)), poolclass=sa.NullPool))
            try:
                with made.begin() as conn:
                    schema.migrate(conn, None)
            finally:
                made.dispose()
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process created one first: use that
                os.link(temp, self.path)
            fsync_directory(self.path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def _open_server(self, create: bool) -> sa.Connection:
        try:
            conn = self.engine.connect()
        except DATABASE_ERRORS as exc:
            raise InventoryError(f"cannot reach the inventory database ({_reason(exc)})", self.where) from None
        try:
            self._check_and_migrate(conn, create)
        except DATABASE_ERRORS as exc:
            conn.close()
            raise InventoryError(f"is not a readable inventory ({_reason(exc)})", self.where) from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_and_migrate(self, conn: sa.Connection, create: bool) -> None:
        """Refuse a foreign, newer or damaged schema; migrate an older one forward (one transaction)."""
        kind = "an SQLite" if conn.dialect.name == "sqlite" else "a PostgreSQL"
        with conn.begin():
            try:
                version = schema.current(conn)
                if version is None and not (conn.dialect.name != "sqlite" and schema.is_empty(conn)):
                    raise schema.SchemaProblem(f"is {kind} database but not an inventory (no schema version)")
                if version is None and not create:
                    raise InventoryError(f"there is no inventory in {self.where}: create one with "
                                         "'vmcrypt inventory init --admin NAME --db-url URL'")
                if version is not None and version > schema.latest():
                    raise schema.SchemaProblem(f"the inventory has schema version {version}; this build knows up "
                                               f"to {schema.latest()}")
                if version is not None:
                    schema.check(conn, version)
                if version == schema.latest() and sa.inspect(conn).has_table(schema.VERSION_TABLE):
                    return
                if conn.dialect.name == "postgresql":  # two processes opening an old or empty database at once
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": schema.MIGRATION_LOCK})
                    version = schema.current(conn)
                schema.migrate(conn, version)
            except schema.SchemaProblem as exc:
                raise InventoryError(str(exc), self.where) from None

    def close(self) -> None:
        """Give back the database connection; the inventory is not usable afterwards."""
        self.conn.close()

    def __enter__(self) -> "Inventory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> Any:
        """The driver's own connection (sqlite3 or psycopg), for low-level checks."""
        return self.conn.connection.driver_connection

    @property
    def dialect(self) -> str:
        """The database's kind: ``sqlite`` or ``postgresql``."""
        return self.conn.dialect.name

    @property
    def schema_version(self) -> int:
        """The schema version the database is at (0 when none is recorded)."""
        with self.operation() as conn:
            return int(schema.current(conn) or 0)

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def operation(self) -> Iterator[sa.Connection]:
        """One transaction for everything written inside (nested uses join the outermost).

        It commits when the body ends, and also when the body raises an ordinary error
        (a refused or failed operation keeps its audit row and what it did before
        failing, as each statement used to on its own); a database error rolls it back."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        transaction = self.conn.begin()
        self._depth = 1
        try:
            yield self.conn
        except DATABASE_ERRORS:
            transaction.rollback()
            raise
        except Exception:
            transaction.commit()
            raise
        except BaseException:
            transaction.rollback()
            raise
        else:
            transaction.commit()
        finally:
            self._depth = 0

    @property
    def in_operation(self) -> bool:
        """Whether an ``operation()`` is open: a statement run now joins its transaction."""
        return self._depth > 0

    def acting_outside(self) -> None:
        """Say that the current operation is about to change files or processes: a database failure from
        now on rolls back only its inventory part, so it is not run again (see ``attempt``)."""
        self._outside = True

    def attempt(self, body: Callable[[], T], attempts: int | None = None) -> T:
        """``body`` in one transaction; run again whole (jittered backoff, at most ``ATTEMPTS`` times) when
        the database gives up on it for contention (PostgreSQL 40P01 deadlock, 40001 serialization
        failure; SQLite ``database is locked``), unless it said ``acting_outside`` first. Raises
        InventoryBusy when it cannot be run again; inside another operation it joins that one (which
        decides for both)."""
        if self._depth:
            return body()
        limit = attempts or ATTEMPTS
        for number in range(1, limit + 1):
            self._outside = False
            try:
                with self.operation():
                    return body()
            except DATABASE_ERRORS as exc:
                cause = busy_cause(exc)
                if cause is None:
                    raise
                if self._outside or number == limit:
                    raise InventoryBusy(cause, number, self._outside) from None
            finally:
                self._outside = False
            time.sleep(backoff(number))
        raise AssertionError("unreachable")

    def _run(self, statement: sa.Executable, params: Any = None) -> sa.CursorResult:
        """One statement: in the current operation, else a transaction of its own (run again on contention)."""
        if not self._depth:
            return self.attempt(lambda: self._run(statement, params))
        with self.operation() as conn:
            return conn.execute(statement, params) if params is not None else conn.execute(statement)

    def _rows(self, statement: sa.Executable) -> list[sa.Row]:
        if not self._depth:
            return self.attempt(lambda: self._rows(statement))
        with self.operation() as conn:
            return list(conn.execute(statement))

    def _guarded(self, statement: sa.Executable, message: str) -> sa.CursorResult:
        """Run a statement that may break a constraint: InventoryError(message) then, and the transaction
        goes on (a savepoint: PostgreSQL would otherwise refuse every later statement of it)."""
        with self.operation() as conn:
            try:
                with conn.begin_nested():
                    return conn.execute(statement)
            except sa.exc.IntegrityError:
                raise InventoryError(message) from None

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT (with its ON CONFLICT clauses)."""
        return (pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert)(table)

    # ------------------------------------------------------------------ principals

    def add_user(self, name: str, password: str) -> None:
        """Add a user, storing a salted scrypt hash of the password; InventoryError when the name is taken or the name
        or password is empty."""
        if not name or not password:
            raise InventoryError("a user needs a name and a password")
        salt = secrets.token_bytes(16)
        self._guarded(schema.users.insert().values(name=name, salt=salt, hash=_hash_password(password, salt, SCRYPT),
                                                   params=json.dumps(SCRYPT)), f"user '{name}' already exists")

    def authenticate(self, name: str, password: str) -> None:
        """Check ``name``'s password; InventoryError otherwise. An unknown user gets the same error, after the same
        scrypt work, as a wrong password, so the answer does not tell which names exist."""
        users = schema.users
        row = self._run(sa.select(users.c.salt, users.c.hash, users.c.params).where(users.c.name == name)).first()
        # an unknown user costs the same scrypt as a wrong password
        salt, stored, params = row if row else (b"\0" * 16, b"\0" * 32, json.dumps(SCRYPT))
        candidate = _hash_password(password, bytes(salt), json.loads(params))
        if not (hmac.compare_digest(candidate, bytes(stored)) and row is not None):
            raise InventoryError(f"login failed for '{name}'")

    def users(self) -> list[str]:
        """Every user's name, sorted."""
        return [r[0] for r in self._rows(sa.select(schema.users.c.name).order_by(schema.users.c.name))]

    def add_group(self, name: str) -> None:
        """Add a group; one that exists already is left as it is."""
        self._run(self._insert(schema.groups).values(name=name).on_conflict_do_nothing())

    def add_to_group(self, group: str, user: str) -> None:
        """Make ``user`` a member of ``group`` (a member already stays one); InventoryError when either does not
        exist."""
        self._guarded(self._insert(schema.group_members).values(grp=group, user=user).on_conflict_do_nothing(),
                      f"no group '{group}' or no user '{user}'")

    def groups_of(self, user: str) -> list[str]:
        """The groups ``user`` belongs to, sorted."""
        members = schema.group_members
        return [r[0] for r in self._rows(sa.select(members.c.grp).where(members.c.user == user).order_by(members.c.grp))]

    # ------------------------------------------------------------------ roles and permissions

    def add_role(self, name: str, privileges: set[Privilege]) -> None:
        """Add a custom role holding ``privileges``; InventoryError when the name is taken."""
        self._guarded(schema.roles.insert().values(name=name, privileges=json.dumps(sorted(p.value for p in privileges)),
                                                   builtin=0), f"role '{name}' already exists")

    def role(self, name: str) -> Role:
        """A built-in role holds what this build defines for it (privileges added later included)."""
        roles = schema.roles
        row = self._run(sa.select(roles.c.privileges, roles.c.builtin).where(roles.c.name == name)).first()
        if row is None:
            raise InventoryError(f"no role '{name}'")
        if row[1] and name in BUILTIN_ROLES:
            return BUILTIN_ROLES[name]
        return Role(name, frozenset(Privilege(p) for p in json.loads(row[0])), bool(row[1]))

    def roles(self) -> list[Role]:
        """Every role: the built-in ones first, then by name."""
        roles = schema.roles
        return [self.role(r[0]) for r in self._rows(sa.select(roles.c.name).order_by(roles.c.builtin.desc(),
                                                                                     roles.c.name))]

    def grant(self, entity: tuple[str, str], principal: str, role: str, *, group: bool = False,
              propagate: bool = True) -> None:
        """Give ``principal`` (a group with ``group``) ``role`` on ``entity``, replacing what it held there;
        ``propagate``: the role also holds on the objects below. InventoryError for an unknown role, user or group."""
        self.role(role)
        table = schema.groups if group else schema.users
        if self._run(sa.select(table.c.name).where(table.c.name == principal)).first() is None:
            raise InventoryError(f"no {'group' if group else 'user'} '{principal}'")
        statement = self._insert(schema.permissions).values(
            entity_type=entity[0], entity=entity[1], principal=principal, is_group=int(group), role=role,
            propagate=int(propagate))
        self._run(statement.on_conflict_do_update(
            index_elements=["entity_type", "entity", "principal", "is_group"],
            set_={"role": statement.excluded.role, "propagate": statement.excluded.propagate}))

    def _lineage(self, entity: tuple[str, str]) -> list[tuple[str, str]]:
        """The object, then its parents up to the root."""
        chain = [entity]
        if entity[0] == "vm":
            chain.append(("datastore", self.vm(entity[1]).datastore))
        if entity != ROOT:
            chain.append(ROOT)
        return chain

    def privileges(self, user: str, entity: tuple[str, str]) -> frozenset[Privilege]:
        """What ``user`` may do on ``entity``: the nearest level holding a permission for them decides."""
        groups = self.groups_of(user)
        perms = schema.permissions
        for depth, level in enumerate(self._lineage(entity)):
            rows = self._rows(sa.select(perms.c.principal, perms.c.is_group, perms.c.role, perms.c.propagate)
                              .where(perms.c.entity_type == level[0], perms.c.entity == level[1]))
            applicable = [(p, g, r) for p, g, r, prop in rows if (depth == 0 or prop)
                          and ((not g and p == user) or (g and p in groups))]
            if not applicable:
                continue
            own = [r for p, g, r in applicable if not g]
            roles = own or [r for _, _, r in applicable]
            return frozenset().union(*(self.role(r).privileges for r in roles))
        return frozenset()

    def permissions(self) -> list[tuple[str, str, str, bool, str, bool]]:
        """Every permission: (entity type, entity, principal, is a group, role, propagates)."""
        perms = schema.permissions
        return [(r[0], r[1], r[2], bool(r[3]), r[4], bool(r[5])) for r in self._rows(
            sa.select(perms).order_by(perms.c.entity_type, perms.c.entity, perms.c.principal, perms.c.is_group))]

    # ------------------------------------------------------------------ objects

    def add_datastore(self, name: str, path: str | os.PathLike[str]) -> None:
        """Add a datastore, making its directory (0700) if needed; InventoryError when the name or the directory is
        already in the inventory."""
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._guarded(schema.datastores.insert().values(name=name, path=str(Path(path).resolve())),
                      f"datastore '{name}' (or its directory) is already in the inventory")

    def datastore_path(self, name: str) -> Path:
        """The directory of datastore ``name``; InventoryError when there is none."""
        stores = schema.datastores
        row = self._run(sa.select(stores.c.path).where(stores.c.name == name)).first()
        if row is None:
            raise InventoryError(f"no datastore '{name}'")
        return Path(row[0])

    def datastores(self) -> list[tuple[str, str]]:
        """(name, path) of every datastore."""
        stores = schema.datastores
        return [(r[0], r[1]) for r in self._rows(sa.select(stores.c.name, stores.c.path).order_by(stores.c.name))]

    def add_host(self, name: str) -> None:
        """Add a host; one that exists already is left as it is."""
        self._run(self._insert(schema.hosts).values(name=name).on_conflict_do_nothing())

    def hosts(self) -> list[str]:
        """Every host's name, sorted."""
        return [r[0] for r in self._rows(sa.select(schema.hosts.c.name).order_by(schema.hosts.c.name))]

    def put_vm(self, record: VmRecord) -> None:
        """Add the VM, or replace what the inventory holds about it."""
        values = {"name": record.name, "vmx_path": record.vmx_path, "datastore": record.datastore,
                  "hw_version": record.hw_version, "firmware": record.firmware, "encrypted": int(record.encrypted),
                  "provider_id": record.provider_id, "key_id": record.key_id, "vtpm": int(record.vtpm),
                  "power_state": PowerState(record.power_state).value, "vtpm_pid": record.vtpm_pid,
                  "vtpm_port": record.vtpm_port, "nvram_generation": record.nvram_generation}
        statement = self._insert(schema.vms).values(values)
        self._guarded(statement.on_conflict_do_update(
            index_elements=["name"], set_={k: statement.excluded[k] for k in values if k != "name"}),
            f"cannot record VM '{record.name}': another VM of the inventory has its .vmx, or its datastore is unknown")

    def vm(self, name: str, *, lock: bool = False) -> VmRecord:
        """The VM's record; ``lock``: also hold its row until the current ``operation()`` ends."""
        query = sa.select(schema.vms).where(schema.vms.c.name == name)
        row = self._run(query.with_for_update() if lock else query).first()
        if row is None:
            raise InventoryError(f"no VM '{name}' in the inventory")
        return _vm_record(tuple(row))

    def vms(self) -> list[VmRecord]:
        """Every VM's record, by name."""
        return [_vm_record(tuple(row)) for row in self._rows(sa.select(schema.vms).order_by(schema.vms.c.name))]

    def remove_vm(self, name: str) -> None:
        """Drop the VM's record and the permissions on it, in one transaction; its files are not touched."""
        perms = schema.permissions
        with self.operation():
            self._run(schema.vms.delete().where(schema.vms.c.name == name))
            self._run(perms.delete().where(perms.c.entity_type == "vm", perms.c.entity == name))

    # ------------------------------------------------------------------ console tickets

    def issue_console_ticket(self, vm: str, user: str, lifetime: datetime.timedelta) -> str:
        """A new one-time console ticket for ``user`` on ``vm``, valid for ``lifetime``; only its SHA-256 digest is
        stored (see ``redeem_console_ticket``)."""
        ticket = secrets.token_urlsafe(32)
        expires = datetime.datetime.now(datetime.timezone.utc) + lifetime
        self._run(schema.console_tickets.insert().values(
            digest=hashlib.sha256(ticket.encode()).digest(), vm=vm, user=user, expires=expires.isoformat()))
        return ticket

    def redeem_console_ticket(self, ticket: str) -> tuple[str, str]:
        """(vm, user) for a valid ticket; each ticket works once (also when two processes redeem it at once)."""
        tickets = schema.console_tickets
        digest = hashlib.sha256(ticket.encode()).digest()
        with self.operation():
            row = self._run(sa.select(tickets.c.vm, tickets.c.user, tickets.c.expires)
                            .where(tickets.c.digest == digest)).first()
            if row is None or self._run(tickets.delete().where(tickets.c.digest == digest)).rowcount != 1:
                raise InventoryError("unknown or already used console ticket")
        if datetime.datetime.fromisoformat(row[2]) < datetime.datetime.now(datetime.timezone.utc):
            raise InventoryError("the console ticket has expired")
        return row[0], row[1]

    # ------------------------------------------------------------------ sessions of the management service

    def open_session(self, user: str, lifetime: datetime.timedelta) -> tuple[str, datetime.datetime]:
        """A new bearer token for ``user`` and when it expires. Only its SHA-256 digest is stored, so every
        service process of this inventory accepts it; expired sessions are purged here."""
        token = secrets.token_urlsafe(32)  # 256 random bits
        now = datetime.datetime.now(datetime.timezone.utc)
        expires = now + lifetime
        table = schema.sessions

        def write() -> None:
            self._run(table.delete().where(table.c.expires <= _stamp(now)))
            self._run(table.insert().values(digest=_token_digest(token), user=user, created=_stamp(now),
                                            expires=_stamp(expires), last_used=_stamp(now)))
        self.attempt(write)
        return token, expires

    def session_user(self, token: str) -> str | None:
        """The user of a live session (its last use noted, to ``LAST_USED_STEP``), or None: unknown, ended or
        expired."""
        if not token:
            return None
        digest = _token_digest(token)
        moment = datetime.datetime.now(datetime.timezone.utc)
        now, stale = _stamp(moment), _stamp(moment - LAST_USED_STEP)
        table = schema.sessions

        def look() -> str | None:
            row = self._run(sa.select(table.c.digest, table.c.user, table.c.expires, table.c.last_used)
                            .where(table.c.digest == digest)).first()
            if row is None or not hmac.compare_digest(bytes(row[0]), digest):
                return None
            if row[2] <= now:
                self._run(table.delete().where(table.c.digest == digest))
                return None
            if row[3] <= stale:  # a write per request would queue every request behind SQLite's one writer
                self._run(table.update().where(table.c.digest == digest).values(last_used=now))
            return str(row[1])
        return self.attempt(look)

    def close_session(self, token: str) -> bool:
        """End the session everywhere (every service process); whether there was one."""
        if not token:
            return False
        table = schema.sessions
        return self.attempt(lambda: self._run(table.delete().where(table.c.digest == _token_digest(token))).rowcount
                            == 1)

    # ------------------------------------------------------------------ audit

    def audit(self, user: str, action: str, entity: str, outcome: str, detail: str = "") -> None:
        """Append a row to the audit log, stamped with the current UTC time."""
        self._run(schema.audit.insert().values(at=_now(), user=user, action=action, entity=entity, outcome=outcome,
                                               detail=detail))

    def audit_log(self) -> list[AuditEntry]:
        """The whole audit log, oldest first."""
        a = schema.audit
        return [AuditEntry(*row) for row in self._rows(
            sa.select(a.c.at, a.c.user, a.c.action, a.c.entity, a.c.outcome, a.c.detail).order_by(a.c.id))]


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _stamp(moment: datetime.datetime) -> str:
    """A UTC time as fixed-width ISO 8601 text, so that text order is time order in both databases."""
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds")


def _vm_record(row: tuple) -> VmRecord:
    (name, vmx, datastore, hw, firmware, encrypted, provider, key, vtpm, power, pid, port, generation) = row
    return VmRecord(name, vmx, datastore, hw, firmware, bool(encrypted), provider, key, bool(vtpm), PowerState(power),
                    pid, port, generation)


def _reason(exc: BaseException) -> str:
    """A database error's first line (the driver's own message, which names no password)."""
    inner = getattr(exc, "orig", None) or exc
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0]
