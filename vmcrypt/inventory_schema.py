"""The inventory's schema: its tables (for queries), its migrations (Alembic) and the strict check at open.

One schema for SQLite and PostgreSQL, made by the same Alembic revisions
(``vmcrypt/migrations``). The schema version is the revision's number. An SQLite
inventory made by builds before Alembic carries its version only in
``PRAGMA user_version`` (same numbering): it is checked against that version,
stamped, and migrated forward like any other.

What an open refuses, naming why: a database without the inventory's schema
version (foreign), a version newer than this build knows, missing or changed
tables, a missing or disabled append-only trigger on the audit log, and absent
built-in roles.
"""

from __future__ import annotations

import functools

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import StaticPool

from vmcrypt.inventory_db import sqlite_events
from vmcrypt.rbac import BUILTIN_ROLES

MIGRATIONS = "vmcrypt:migrations"
VERSION_TABLE = "alembic_version"
# the append-only triggers of the audit log, by dialect (PostgreSQL's TRUNCATE has a trigger of its own)
AUDIT_TRIGGERS = {"sqlite": ("audit_no_delete", "audit_no_update"),
                  "postgresql": ("audit_no_delete", "audit_no_truncate", "audit_no_update")}
MIGRATION_LOCK = 0x766D6372  # the PostgreSQL advisory lock two processes migrating at once take in turn

metadata = sa.MetaData()


def _text(name: str, primary: bool = False, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Text, primary_key=primary, nullable=nullable)


datastores = sa.Table("datastores", metadata, _text("name", True), _text("path"))
hosts = sa.Table("hosts", metadata, _text("name", True), sa.Column("trusted", sa.Integer))
vms = sa.Table("vms", metadata, _text("name", True), _text("vmx_path"), _text("datastore"),
               sa.Column("hw_version", sa.Integer), _text("firmware"), sa.Column("encrypted", sa.Integer),
               _text("provider_id", nullable=True), _text("key_id", nullable=True), sa.Column("vtpm", sa.Integer),
               _text("power_state"), sa.Column("vtpm_pid", sa.Integer), sa.Column("vtpm_port", sa.Integer),
               sa.Column("nvram_generation", sa.Integer))
users = sa.Table("users", metadata, _text("name", True), sa.Column("salt", sa.LargeBinary),
                 sa.Column("hash", sa.LargeBinary), _text("params"))
groups = sa.Table("groups", metadata, _text("name", True))
group_members = sa.Table("group_members", metadata, _text("grp", True), _text("user", True))
roles = sa.Table("roles", metadata, _text("name", True), _text("privileges"), sa.Column("builtin", sa.Integer))
permissions = sa.Table("permissions", metadata, _text("entity_type", True), _text("entity", True),
                       _text("principal", True), sa.Column("is_group", sa.Integer, primary_key=True),
                       _text("role"), sa.Column("propagate", sa.Integer))
audit = sa.Table("audit", metadata, sa.Column("id", sa.Integer, primary_key=True), _text("at"), _text("user"),
                 _text("action"), _text("entity"), _text("outcome"), _text("detail"))
console_tickets = sa.Table("console_tickets", metadata, sa.Column("digest", sa.LargeBinary, primary_key=True),
                           _text("vm"), _text("user"), _text("expires"))
sessions = sa.Table("sessions", metadata, sa.Column("digest", sa.LargeBinary, primary_key=True), _text("user"),
                    _text("created"), _text("expires"), _text("last_used"))


class SchemaProblem(Exception):
    """Why a database is not an inventory this build can open (the caller names the database)."""


# ----------------------------------------------------------------------------- versions


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    return config


@functools.cache
def latest() -> int:
    """The newest schema version this build knows."""
    return int(ScriptDirectory.from_config(_config()).get_current_head())


def current(connection: sa.Connection) -> int | None:
    """The schema version of the database: its Alembic revision and, on SQLite, ``PRAGMA user_version``
    (kept in step; older builds kept only that), the higher of the two; None when it has neither
    (empty, or not an inventory)."""
    versions = []
    if sa.inspect(connection).has_table(VERSION_TABLE):
        revision = MigrationContext.configure(connection).get_current_revision()
        try:
            versions.append(int(revision or 0))
        except ValueError:
            raise SchemaProblem(f"has an unknown schema revision {revision!r}") from None
    if connection.dialect.name == "sqlite":
        versions.append(int(connection.exec_driver_sql("PRAGMA user_version").scalar() or 0))
    return max(versions, default=0) or None


def is_empty(connection: sa.Connection) -> bool:
    """Whether the database has no tables at all: a PostgreSQL database without a schema version may take a new
    inventory only then."""
    return not sa.inspect(connection).get_table_names()


def migrate(connection: sa.Connection, version: int | None) -> None:
    """Bring the database from ``version`` (None: empty) to the latest, inside the caller's transaction."""
    config = _config(connection)
    if version is not None and not sa.inspect(connection).has_table(VERSION_TABLE):
        command.stamp(config, f"{version:04d}")  # an inventory of a build before Alembic
    if version != latest():
        command.upgrade(config, "head")
    if connection.dialect.name == "sqlite":  # what older builds read, kept in step
        connection.exec_driver_sql(f"PRAGMA user_version = {latest()}")


# ----------------------------------------------------------------------------- the strict check


@functools.cache
def expected_tables(version: int) -> dict[str, tuple[str, ...]]:
    """The tables of schema ``version`` and their columns, as the migrations make them."""
    made = sqlite_events(sa.create_engine("sqlite://", poolclass=StaticPool))
    try:
        with made.begin() as connection:
            command.upgrade(_config(connection), f"{version:04d}")
            return {name: cols for name, cols in _tables(connection).items() if name != VERSION_TABLE}
    finally:
        made.dispose()


def _tables(connection: sa.Connection) -> dict[str, tuple[str, ...]]:
    if connection.dialect.name == "sqlite":
        names = [r[0] for r in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {name: tuple(r[1] for r in connection.exec_driver_sql(f"PRAGMA table_info('{name}')"))
                for name in names}
    tables: dict[str, list[str]] = {}
    for table, column in connection.execute(sa.text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position")):
        tables.setdefault(table, []).append(column)
    return {name: tuple(cols) for name, cols in tables.items()}


def _audit_triggers(connection: sa.Connection) -> tuple[set[str], set[str]]:
    """(present, disabled) append-only triggers on the audit table."""
    if connection.dialect.name == "sqlite":
        return {r[0] for r in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'")}, set()
    rows = connection.execute(sa.text(
        "SELECT t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE c.relname = 'audit' AND c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal"))
    found = {name: enabled for name, enabled in rows}
    return set(found), {name for name, enabled in found.items() if enabled == "D"}


def check(connection: sa.Connection, version: int) -> None:
    """Raise SchemaProblem unless the database has schema ``version``'s tables, the audit log's
    append-only triggers (enabled) and the built-in roles."""
    have = _tables(connection)
    want = expected_tables(version)
    missing = [f"table {name}" for name in want if name not in have]
    present, disabled = _audit_triggers(connection)
    missing += [f"trigger {name}" for name in AUDIT_TRIGGERS[connection.dialect.name] if name not in present]
    changed = [name for name, cols in want.items() if name in have and have[name] != cols]
    if missing or changed or disabled:
        what = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                        f"changed table {', '.join(changed)}" if changed else "",
                                        f"disabled trigger {', '.join(sorted(disabled))}" if disabled else ""]))
        raise SchemaProblem(f"does not have the inventory's schema version {version} ({what}): it was tampered "
                            "with or damaged; restore it from a backup")
    found = {r[0] for r in connection.execute(sa.select(roles.c.name).where(roles.c.builtin == 1))}
    absent = sorted(set(BUILTIN_ROLES) - found)
    if absent:
        raise SchemaProblem(f"lacks the built-in roles {', '.join(absent)}: it was tampered with; restore it "
                            "from a backup")

