"""The vCenter-like inventory: datastores, hosts, VMs, users, groups, roles, permissions, audit.

One SQLite database under the management home (``inventory.db``, mode 0600),
schema versioned with ``PRAGMA user_version`` and migrated forward on open.
Permissions follow vSphere: a permission on an object applies to it and, when
``propagate`` is set, to its children; the permission nearest to the object
wins, and at one level a user's own permission beats its groups'. The audit log
is append-only (triggers refuse UPDATE and DELETE).

An inventory is created once, whole (built under a temporary name, then linked
into place), and never re-created over an existing file: opening refuses an
empty, truncated or damaged file (SQLite integrity check), one without the
inventory's tables, triggers and built-in roles, or a newer schema, naming the
file and why. Only ``create=True`` (``inventory init``, the API) makes a new one,
and only where none exists.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from durable.atomic import fsync_directory
from vmcrypt.errors import VmcryptError
from vmcrypt.power import PowerState
from vmcrypt.rbac import BUILTIN_ROLES, TRUSTED_ADMINS_GROUP, Privilege, Role

DB_FILE = "inventory.db"
ROOT = ("root", "")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}

MIGRATIONS = [
    # 1: the whole model
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
    # 2: the latest generation of each VM's encrypted .nvram seen by the management plane (rollback detection)
    """
    ALTER TABLE vms ADD COLUMN nvram_generation INTEGER;
    """,
]


class InventoryError(VmcryptError):
    """The inventory cannot do what was asked (unknown object, duplicate name, bad login)."""


@dataclass(frozen=True)
class VmRecord:
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
    def __init__(self, home: str | os.PathLike[str], *, create: bool = True) -> None:
        """Open the inventory of ``home``; ``create``: make a new one if (and only if) there is none."""
        self.path = Path(home) / DB_FILE
        if not self.path.exists():
            if not create:
                raise InventoryError(f"there is no inventory in {self.path.parent}: "
                                     "create one with 'vmcrypt inventory init --admin NAME'")
            self._create()
        self.db = self._open()

    def _create(self) -> None:
        """Build a complete new inventory under a temporary name, then link it into place."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = self.path.with_name(f".{DB_FILE}.creating-{secrets.token_hex(6)}")
        os.close(os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self.db = sqlite3.connect(temp, isolation_level=None)
            try:
                self._migrate()
            finally:
                self.db.close()
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

    def _open(self) -> sqlite3.Connection:
        if self.path.stat().st_size == 0:
            raise InventoryError("is empty (0 bytes): it was truncated or replaced. An existing inventory is never "
                                 "re-created (that would drop its users, roles and audit log): restore it from a backup",
                                 self.path)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise InventoryError(f"is damaged (SQLite integrity check: {problems[0]})", self.path)
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version == 0:
                raise InventoryError("is an SQLite database but not an inventory (no schema version)", self.path)
            if version > len(MIGRATIONS):
                raise InventoryError(
                    f"the inventory has schema version {version}; this build knows up to {len(MIGRATIONS)}", self.path)
            _check_schema(db, version, self.path)
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA journal_mode = WAL")
            self.db = db
            self._migrate()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise InventoryError(f"is not a readable inventory ({exc})", self.path) from None
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Inventory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > len(MIGRATIONS):
            raise InventoryError(f"the inventory has schema version {version}; this build knows up to {len(MIGRATIONS)}",
                                 self.path)
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(script):
                    self.db.execute(statement)
                if number == 1:
                    self._seed()
                self.db.execute(f"PRAGMA user_version = {number}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _seed(self) -> None:
        for role in BUILTIN_ROLES.values():
            self.db.execute("INSERT INTO roles VALUES (?, ?, 1)", (role.name, json.dumps(sorted(p.value for p in role.privileges))))
        self.db.execute("INSERT INTO groups VALUES (?)", (TRUSTED_ADMINS_GROUP,))

    # ------------------------------------------------------------------ principals

    def add_user(self, name: str, password: str) -> None:
        if not name or not password:
            raise InventoryError("a user needs a name and a password")
        salt = secrets.token_bytes(16)
        try:
            self.db.execute("INSERT INTO users VALUES (?, ?, ?, ?)",
                            (name, salt, _hash_password(password, salt, SCRYPT), json.dumps(SCRYPT)))
        except sqlite3.IntegrityError:
            raise InventoryError(f"user '{name}' already exists") from None

    def authenticate(self, name: str, password: str) -> None:
        row = self.db.execute("SELECT salt, hash, params FROM users WHERE name = ?", (name,)).fetchone()
        # an unknown user costs the same scrypt as a wrong password
        salt, stored, params = row if row else (b"\0" * 16, b"\0" * 32, json.dumps(SCRYPT))
        candidate = _hash_password(password, salt, json.loads(params))
        if not (hmac.compare_digest(candidate, stored) and row is not None):
            raise InventoryError(f"login failed for '{name}'")

    def users(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM users ORDER BY name")]

    def add_group(self, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO groups VALUES (?)", (name,))

    def add_to_group(self, group: str, user: str) -> None:
        try:
            self.db.execute("INSERT OR IGNORE INTO group_members VALUES (?, ?)", (group, user))
        except sqlite3.IntegrityError:
            raise InventoryError(f"no group '{group}' or no user '{user}'") from None

    def groups_of(self, user: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT grp FROM group_members WHERE user = ? ORDER BY grp", (user,))]

    # ------------------------------------------------------------------ roles and permissions

    def add_role(self, name: str, privileges: set[Privilege]) -> None:
        try:
            self.db.execute("INSERT INTO roles VALUES (?, ?, 0)", (name, json.dumps(sorted(p.value for p in privileges))))
        except sqlite3.IntegrityError:
            raise InventoryError(f"role '{name}' already exists") from None

    def role(self, name: str) -> Role:
        """A built-in role holds what this build defines for it (privileges added later included)."""
        row = self.db.execute("SELECT privileges, builtin FROM roles WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise InventoryError(f"no role '{name}'")
        if row[1] and name in BUILTIN_ROLES:
            return BUILTIN_ROLES[name]
        return Role(name, frozenset(Privilege(p) for p in json.loads(row[0])), bool(row[1]))

    def roles(self) -> list[Role]:
        return [self.role(r[0]) for r in self.db.execute("SELECT name FROM roles ORDER BY builtin DESC, name")]

    def grant(self, entity: tuple[str, str], principal: str, role: str, *, group: bool = False,
              propagate: bool = True) -> None:
        self.role(role)
        table = "groups" if group else "users"
        if self.db.execute(f"SELECT 1 FROM {table} WHERE name = ?", (principal,)).fetchone() is None:
            raise InventoryError(f"no {'group' if group else 'user'} '{principal}'")
        self.db.execute("INSERT OR REPLACE INTO permissions VALUES (?, ?, ?, ?, ?, ?)",
                        (entity[0], entity[1], principal, int(group), role, int(propagate)))

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
        for depth, level in enumerate(self._lineage(entity)):
            rows = self.db.execute("SELECT principal, is_group, role, propagate FROM permissions "
                                   "WHERE entity_type = ? AND entity = ?", level).fetchall()
            applicable = [(p, g, r) for p, g, r, prop in rows if (depth == 0 or prop)
                          and ((not g and p == user) or (g and p in groups))]
            if not applicable:
                continue
            own = [r for p, g, r in applicable if not g]
            roles = own or [r for _, _, r in applicable]
            return frozenset().union(*(self.role(r).privileges for r in roles))
        return frozenset()

    # ------------------------------------------------------------------ objects

    def add_datastore(self, name: str, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.db.execute("INSERT INTO datastores VALUES (?, ?)", (name, str(Path(path).resolve())))
        except sqlite3.IntegrityError:
            raise InventoryError(f"datastore '{name}' (or its directory) is already in the inventory") from None

    def datastore_path(self, name: str) -> Path:
        row = self.db.execute("SELECT path FROM datastores WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise InventoryError(f"no datastore '{name}'")
        return Path(row[0])

    def datastores(self) -> list[tuple[str, str]]:
        """(name, path) of every datastore."""
        return [(r[0], r[1]) for r in self.db.execute("SELECT name, path FROM datastores ORDER BY name")]

    def add_host(self, name: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO hosts (name) VALUES (?)", (name,))

    def hosts(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM hosts ORDER BY name")]

    def put_vm(self, record: VmRecord) -> None:
        self.db.execute("INSERT OR REPLACE INTO vms VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (record.name, record.vmx_path, record.datastore, record.hw_version, record.firmware,
                         int(record.encrypted), record.provider_id, record.key_id, int(record.vtpm),
                         PowerState(record.power_state).value, record.vtpm_pid, record.vtpm_port, record.nvram_generation))

    def vm(self, name: str) -> VmRecord:
        row = self.db.execute("SELECT * FROM vms WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise InventoryError(f"no VM '{name}' in the inventory")
        return _vm_record(row)

    def vms(self) -> list[VmRecord]:
        return [_vm_record(row) for row in self.db.execute("SELECT * FROM vms ORDER BY name")]

    def remove_vm(self, name: str) -> None:
        self.db.execute("DELETE FROM vms WHERE name = ?", (name,))
        self.db.execute("DELETE FROM permissions WHERE entity_type = 'vm' AND entity = ?", (name,))

    # ------------------------------------------------------------------ console tickets

    def issue_console_ticket(self, vm: str, user: str, lifetime: datetime.timedelta) -> str:
        ticket = secrets.token_urlsafe(32)
        expires = datetime.datetime.now(datetime.timezone.utc) + lifetime
        self.db.execute("INSERT INTO console_tickets VALUES (?, ?, ?, ?)",
                        (hashlib.sha256(ticket.encode()).digest(), vm, user, expires.isoformat()))
        return ticket

    def redeem_console_ticket(self, ticket: str) -> tuple[str, str]:
        """(vm, user) for a valid ticket; each ticket works once."""
        digest = hashlib.sha256(ticket.encode()).digest()
        row = self.db.execute("SELECT vm, user, expires FROM console_tickets WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise InventoryError("unknown or already used console ticket")
        self.db.execute("DELETE FROM console_tickets WHERE digest = ?", (digest,))
        if datetime.datetime.fromisoformat(row[2]) < datetime.datetime.now(datetime.timezone.utc):
            raise InventoryError("the console ticket has expired")
        return row[0], row[1]

    # ------------------------------------------------------------------ audit

    def audit(self, user: str, action: str, entity: str, outcome: str, detail: str = "") -> None:
        self.db.execute("INSERT INTO audit (at, user, action, entity, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
                        (_now(), user, action, entity, outcome, detail))

    def audit_log(self) -> list[AuditEntry]:
        return [AuditEntry(*row) for row in self.db.execute("SELECT at, user, action, entity, outcome, detail FROM audit ORDER BY id")]


def _vm_record(row: tuple) -> VmRecord:
    (name, vmx, datastore, hw, firmware, encrypted, provider, key, vtpm, power, pid, port, generation) = row
    return VmRecord(name, vmx, datastore, hw, firmware, bool(encrypted), provider, key, bool(vtpm), PowerState(power),
                    pid, port, generation)


@functools.cache
def _expected_schema(version: int) -> tuple[list[tuple[str, str]], dict[str, list[tuple]]]:
    db = sqlite3.connect(":memory:")
    try:
        for script in MIGRATIONS[:version]:
            for statement in _statements(script):
                db.execute(statement)
        return _schema_of(db)
    finally:
        db.close()


def _schema_of(db: sqlite3.Connection) -> tuple[list[tuple[str, str]], dict[str, list[tuple]]]:
    """(type, name) of every table, index and trigger, and each table's columns."""
    objects = sorted(db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    columns = {name: [tuple(row[1:6]) for row in db.execute(f"PRAGMA table_info('{name}')")]
               for kind, name in objects if kind == "table"}
    return objects, columns


def _check_schema(db: sqlite3.Connection, version: int, path: Path) -> None:
    """The tables, columns and triggers schema ``version`` has, and the built-in roles."""
    objects, columns = _schema_of(db)
    want_objects, want_columns = _expected_schema(version)
    missing = [f"{kind} {name}" for kind, name in want_objects if (kind, name) not in objects]
    changed = [name for name, cols in want_columns.items() if name in columns and columns[name] != cols]
    if missing or changed:
        what = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                        f"changed table {', '.join(changed)}" if changed else ""]))
        raise InventoryError(f"does not have the inventory's schema version {version} ({what}): it was tampered with "
                             "or damaged; restore it from a backup", path)
    roles = {row[0] for row in db.execute("SELECT name FROM roles WHERE builtin = 1")}
    absent = sorted(set(BUILTIN_ROLES) - roles)
    if absent:
        raise InventoryError(f"lacks the built-in roles {', '.join(absent)}: it was tampered with; restore it from a "
                             "backup", path)


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements, current = [], ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements
