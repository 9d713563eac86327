"""Moving a home's SQLite inventory to PostgreSQL (``vmcrypt inventory move-to --db-url URL``).

Refused, with nothing written, when: the home's inventory is not its SQLite file
(it already names a URL, or ``$VMCRYPT_DB_URL`` is set), a management service of
the home is running (a live socket under ``HOME/run``, or a ``vmcrypt ... server``
process of this home), or the target database is not empty. Otherwise, in one
transaction on the target: the schema is made by the same migrations, every
table is copied (the audit log in order, ids unchanged, its sequence set past
them), and each table's row count and digest (SHA-256 over its rows, canonical
and sorted) are compared with the source's, which is held by its write lock all
the while; a difference rolls the target back. Then the target is opened as any
inventory is (the strict check) and compared once more, the URL is recorded for
the home (``inventory_db.record``), and the SQLite file is kept, renamed
``inventory.db.moved-TIMESTAMP`` (0600): nothing is lost.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from durable.atomic import fsync_directory
from vmcrypt import inventory_schema as schema
from vmcrypt.inventory import DATABASE_ERRORS, Inventory, InventoryError, _reason
from vmcrypt.inventory_db import Database, engine, parse_url, record, resolve

# the copy's order: every table after those its rows refer to (the target checks foreign keys as it goes)
COPY_ORDER = ("datastores", "hosts", "vms", "users", "groups", "group_members", "roles", "permissions", "audit",
              "console_tickets", "sessions")
KEPT_SUFFIX = ".moved-"


class InventoryMoveError(InventoryError):
    """The inventory cannot be moved (and nothing was changed)."""


@dataclass(frozen=True)
class TableCopy:
    """One table as copied: its row count and the digest of its rows, equal on both sides."""

    name: str
    rows: int
    digest: str  # SHA-256, hex


@dataclass(frozen=True)
class MoveResult:
    """What ``move-to`` did: where the inventory went, each table copied, and where the SQLite file is kept."""

    target: str  # the URL, password masked
    tables: tuple[TableCopy, ...]
    kept: Path  # the SQLite file, renamed


def target_url(text: str) -> Database:
    """The database to move to: a PostgreSQL URL (an unusable one raises DatabaseUrlError)."""
    database = Database(parse_url(text), "argument")
    if database.dialect != "postgresql":
        raise InventoryMoveError("an inventory moves to PostgreSQL only (postgresql+psycopg://USER@HOST:PORT/DB)")
    return database


def running_services(home: Path) -> list[str]:
    """What shows a management service of ``home`` running: live sockets under HOME/run, server processes."""
    found = []
    run = home / "run"
    for path in sorted(run.glob("*.sock")) if run.is_dir() else []:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(str(path))
            found.append(f"socket {path}")
    resolved = home.resolve()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            words = proc.joinpath("cmdline").read_bytes().decode(errors="replace").split("\0")
            if "server" in words and any("vmcrypt" in w for w in words[:3]) and "--home" in words:
                given = words[words.index("--home") + 1] if words.index("--home") + 1 < len(words) else ""
                cwd = Path(os.readlink(proc / "cwd"))
                if given and (cwd / given).resolve() == resolved and int(proc.name) != os.getpid():
                    found.append(f"process {proc.name}")
    return found


def _canonical(row: sa.Row) -> bytes:
    return json.dumps([bytes(v).hex() if isinstance(v, (bytes, memoryview)) else v for v in row],
                      separators=(",", ":")).encode()


def table_digest(rows: list[sa.Row]) -> str:
    """SHA-256 over the table's rows, each canonical, in sorted order (the two databases sort text apart)."""
    digest = hashlib.sha256()
    for encoded in sorted(_canonical(r) for r in rows):
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return digest.hexdigest()


def _read(conn: sa.Connection) -> dict[str, list[sa.Row]]:
    return {name: list(conn.execute(sa.select(schema.metadata.tables[name]))) for name in COPY_ORDER}


def _summary(contents: dict[str, list[sa.Row]]) -> tuple[TableCopy, ...]:
    return tuple(TableCopy(name, len(rows), table_digest(rows)) for name, rows in contents.items())


def _check_copy(expected: tuple[TableCopy, ...], found: tuple[TableCopy, ...], outcome: str) -> None:
    different = [f"{e.name} ({e.rows} rows, {f.rows} in the target)" if e.rows != f.rows else f"{e.name} (digest)"
                 for e, f in zip(expected, found) if e != f]
    if different:
        raise InventoryMoveError(f"the copy differs from the SQLite inventory in {', '.join(different)}: {outcome}")


def move_to(home: str | os.PathLike[str], url: str) -> MoveResult:
    """Move ``home``'s SQLite inventory to the empty PostgreSQL database ``url`` (see the module's docstring)."""
    home = Path(home)
    target = target_url(url)
    current = resolve(home)
    if current.source != "default":
        raise InventoryMoveError(f"this home's inventory is already at {current.shown} ({current.source}): "
                                 "only an SQLite inventory is moved")
    path = current.sqlite_path
    assert path is not None
    if not path.exists():
        raise InventoryMoveError(f"there is no inventory in {home} to move")
    live = running_services(home)
    if live:
        raise InventoryMoveError(f"a management service of this home is running ({', '.join(live)}): stop it first")
    source = Inventory(home, create=False)  # checked, and migrated to the latest schema
    try:
        with source.operation() as conn:  # its write lock, held to the end: nothing changes it meanwhile
            contents = _read(conn)
            expected = _summary(contents)
            _copy(target, contents, expected)
    finally:
        source.close()
    with Inventory(home, create=False, url=url) as moved:  # the strict open, then compared once more
        with moved.operation() as conn:
            _check_copy(expected, _summary(_read(conn)), "the home keeps its SQLite inventory; "
                        "empty the target database before trying again")
    record(home, target)
    return MoveResult(target.shown, expected, _keep(path))


def _copy(target: Database, contents: dict[str, list[sa.Row]], expected: tuple[TableCopy, ...]) -> None:
    if set(COPY_ORDER) != set(schema.expected_tables(schema.latest())):
        raise InventoryMoveError("this build does not know how to copy every table of the inventory")
    try:
        with engine(target).connect() as conn, conn.begin():
            names = sa.inspect(conn).get_table_names()
            if names:
                raise InventoryMoveError(f"{target.shown} is not empty ({len(names)} tables): an inventory moves "
                                         "only into an empty database")
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": schema.MIGRATION_LOCK})
            schema.migrate(conn, None)
            conn.execute(schema.roles.delete())  # the seeded built-in roles and group: the source's replace them
            conn.execute(schema.groups.delete())
            for name, rows in contents.items():
                if rows:
                    conn.execute(schema.metadata.tables[name].insert(), [dict(r._mapping) for r in rows])
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('audit', 'id'), "
                                 "(SELECT COALESCE(MAX(id), 0) + 1 FROM audit), false)"))
            _check_copy(expected, _summary(_read(conn)), "the target was rolled back")
    except DATABASE_ERRORS as exc:
        raise InventoryMoveError(f"cannot copy the inventory to {target.shown} ({_reason(exc)}); nothing was "
                                 "kept there") from None


def _keep(path: Path) -> Path:
    """Rename the SQLite file (and any journal beside it) out of the way, 0600."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = path.with_name(f"{path.name}{KEPT_SUFFIX}{stamp}")
    os.chmod(path, 0o600)
    os.rename(path, kept)
    for extra in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path.with_name(path.name + extra), kept.with_name(kept.name + extra))
    fsync_directory(path.parent)
    return kept


__all__ = ["InventoryMoveError", "MoveResult", "TableCopy", "move_to", "running_services"]
