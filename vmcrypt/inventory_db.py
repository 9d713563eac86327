"""Where the inventory lives and how to reach it: SQLite in the home (the default) or PostgreSQL by URL.

The database is named by a SQLAlchemy URL, looked for in this order: the URL
given (``inventory init --db-url``, the API), ``$VMCRYPT_DB_URL``, the file
``HOME/inventory.url`` (written by ``inventory init --db-url``), and else
``sqlite:///HOME/inventory.db``. A password never sits in ``inventory.url``:
it comes from the URL given on the command line or in the environment, or from
``HOME/inventory.password`` (0600, refused when others may read it). Every URL
shown to a person (messages, ``describe``) has its password masked.

Engines are made once per process and URL: PostgreSQL keeps a small pool of
connections; SQLite opens a fresh connection for every ``Inventory`` (each open
re-checks the file, as a command line run would), with foreign keys on, a busy
timeout, and ``BEGIN IMMEDIATE`` for every transaction so that two writers
queue instead of failing half-way.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from durable.atomic import write_atomic
from vmcrypt.errors import VmcryptError

DB_FILE = "inventory.db"
URL_FILE = "inventory.url"
PASSWORD_FILE = "inventory.password"
ENV_DB_URL = "VMCRYPT_DB_URL"
SUPPORTED = ("sqlite", "postgresql")
SQLITE_BUSY_MS = 30_000


class DatabaseUrlError(VmcryptError):
    """The inventory's database URL is malformed, of an unsupported kind, or its password file is unsafe."""


@dataclass(frozen=True)
class Database:
    """The resolved inventory database: its URL (with the password, for connecting) and where it came from."""

    url: URL
    source: str  # "argument", "environment", URL_FILE or "default"

    @property
    def dialect(self) -> str:
        """The database's kind: ``sqlite`` or ``postgresql``."""
        return self.url.get_backend_name()

    @property
    def shown(self) -> str:
        """The URL as a person may see it: the password masked."""
        return self.url.render_as_string(hide_password=True)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for a PostgreSQL database."""
        return Path(self.url.database) if self.dialect == "sqlite" and self.url.database else None


def parse_url(text: str) -> URL:
    """A SQLAlchemy URL of a supported kind; PostgreSQL goes through psycopg (3)."""
    try:
        url = sa.make_url(text.strip())
    except Exception:  # noqa: BLE001 - the message of make_url may echo the password
        raise DatabaseUrlError("the inventory database URL is malformed (expected e.g. "
                               "postgresql+psycopg://USER@HOST:PORT/DB or sqlite:///PATH)") from None
    backend = url.get_backend_name()
    if backend not in SUPPORTED:
        raise DatabaseUrlError(f"the inventory cannot live in a '{backend}' database (supported: sqlite, postgresql)")
    if backend == "postgresql" and url.drivername != "postgresql+psycopg":
        url = url.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and not url.database:
        raise DatabaseUrlError("an SQLite inventory needs a file (sqlite:///PATH)")
    return url


def without_password(url: URL) -> URL:
    """The URL with no password at all (``URL.set(password=None)`` would keep it)."""
    return url._replace(password=None)


def _password_file(home: Path) -> str | None:
    path = home / PASSWORD_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatabaseUrlError(f"cannot read the database password file ({exc.strerror})", path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise DatabaseUrlError("the database password file must be a regular file of mode 0600", path)
        return os.read(fd, 4096).decode().strip("\r\n")
    finally:
        os.close(fd)


def resolve(home: str | os.PathLike[str], explicit: str | None = None) -> Database:
    """The inventory database of ``home`` (see the module's docstring for the order)."""
    home = Path(home)
    if explicit:
        url, source = parse_url(explicit), "argument"
    elif os.environ.get(ENV_DB_URL):
        url, source = parse_url(os.environ[ENV_DB_URL]), "environment"
    elif (home / URL_FILE).is_file():
        url, source = parse_url((home / URL_FILE).read_text()), URL_FILE
    else:
        return Database(URL.create("sqlite", database=str(home / DB_FILE)), "default")
    if url.get_backend_name() != "sqlite" and url.password is None:
        password = _password_file(home)
        if password is not None:
            url = url.set(password=password)
    return Database(url, source)


def configured(home: str | os.PathLike[str]) -> bool:
    """Whether ``home`` names an inventory at all (its SQLite file, a URL file, or ``$VMCRYPT_DB_URL``)."""
    home = Path(home)
    return (home / DB_FILE).exists() or (home / URL_FILE).is_file() or bool(os.environ.get(ENV_DB_URL))


def record(home: str | os.PathLike[str], database: Database) -> None:
    """Remember a PostgreSQL URL in the home: the URL without its password (0600) and the password apart (0600)."""
    home = Path(home)
    if database.dialect == "sqlite":
        return
    write_atomic(home / URL_FILE, (without_password(database.url).render_as_string(hide_password=False)
                                   + "\n").encode(), mode=0o600)
    if database.url.password is not None:
        write_atomic(home / PASSWORD_FILE, f"{database.url.password}\n".encode(), mode=0o600)


_engines: dict[tuple[str, str], Engine] = {}
_engines_guard = threading.Lock()


def engine(database: Database) -> Engine:
    """The process's engine for ``database`` (made on first use)."""
    key = (database.url.render_as_string(hide_password=False), database.dialect)
    with _engines_guard:
        found = _engines.get(key)
        if found is None:
            found = _engines[key] = _make_engine(database)
        return found


def _make_engine(database: Database) -> Engine:
    if database.dialect == "sqlite":
        return sqlite_events(sa.create_engine(database.url, poolclass=NullPool))
    if importlib.util.find_spec("psycopg") is None:
        raise DatabaseUrlError("an inventory in PostgreSQL needs psycopg: pip install 'vmcrypt[postgres]'")
    return sa.create_engine(database.url, pool_size=2, max_overflow=4, pool_pre_ping=True,
                            connect_args={"connect_timeout": 10, "application_name": "vmcrypt"})


def sqlite_events(made: Engine) -> Engine:
    """Explicit ``BEGIN IMMEDIATE`` transactions, foreign keys and a busy timeout on every SQLite connection."""
    sa.event.listen(made, "connect", _sqlite_connect)
    sa.event.listen(made, "begin", _sqlite_begin)
    return made


def _sqlite_connect(dbapi_connection, record) -> None:  # noqa: ANN001 - SQLAlchemy's event signature
    dbapi_connection.isolation_level = None  # transactions are begun explicitly (below), not by the driver
    dbapi_connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
    dbapi_connection.execute("PRAGMA foreign_keys = ON")


def _sqlite_begin(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def dispose_all() -> None:
    """Close every pooled connection (a process about to fork or exit)."""
    with _engines_guard:
        for made in _engines.values():
            made.dispose()
        _engines.clear()
