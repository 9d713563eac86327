"""swtpm's ``key=value,flag`` option syntax, as libvirt and QEMU users pass it to ``swtpm socket``.

``vtpm socket`` takes the same options (``--tpmstate dir=DIR,mode=0600``,
``--ctrl type=unixio,path=P``, ...). Each option value is parsed here into a
small frozen dataclass; anything we do not implement (an unknown key, a bad
number, a mode we would not honour) is an ``OptionError`` naming the option and
the key, which the command line turns into a usage error (exit status 2).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BINDADDR = "127.0.0.1"
DEFAULT_SERVER_PORT = 6321  # swtpm's default data port
STATE_FILE_MODE = 0o600  # every state file is written owner-only


class OptionError(ValueError):
    """An option value we cannot accept; the message names the option and the key."""


class Kind(enum.Enum):
    """How an option key's value is checked and converted (see ``parse_options``)."""

    STRING = "string"
    INT = "int"
    PORT = "port"
    MODE = "mode"  # octal file mode
    FLAG = "flag"  # a bare key (or key=true/false)


TRUE_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_options(option: str, text: str, keys: Mapping[str, Kind]) -> dict[str, object]:
    """``a=1,b,c=x`` → {"a": 1, "b": True, "c": "x"} with each value checked against ``keys``."""
    values: dict[str, object] = {}
    if not text.strip():
        raise OptionError(f"{option}: empty value")
    for item in text.split(","):
        if not item:
            raise OptionError(f"{option}: empty item in {text!r}")
        key, eq, raw = item.partition("=")
        kind = keys.get(key)
        if kind is None:
            raise OptionError(f"{option}: unknown key {key!r} (known: {', '.join(sorted(keys))})")
        if key in values:
            raise OptionError(f"{option}: {key} given twice")
        values[key] = _value(option, key, kind, raw if eq else None)
    return values


def _value(option: str, key: str, kind: Kind, raw: str | None) -> object:
    if kind is Kind.FLAG:
        if raw is None:
            return True
        if raw.lower() not in TRUE_WORDS:
            raise OptionError(f"{option}: {key}={raw}: not true or false")
        return TRUE_WORDS[raw.lower()]
    if raw is None or raw == "":
        raise OptionError(f"{option}: {key} needs a value ({key}=...)")
    if kind is Kind.STRING:
        return raw
    if kind is Kind.MODE:
        try:
            mode = int(raw, 8)
        except ValueError:
            raise OptionError(f"{option}: {key}={raw}: not an octal file mode such as 0600") from None
        if not 0 <= mode <= 0o777:
            raise OptionError(f"{option}: {key}={raw}: not a file mode (0 to 0777)")
        return mode
    try:
        number = int(raw, 10)
    except ValueError:
        raise OptionError(f"{option}: {key}={raw}: not a number") from None
    if kind is Kind.PORT and not 0 < number < 65536:
        raise OptionError(f"{option}: {key}={raw}: not a TCP port (1 to 65535)")
    if kind is Kind.INT and number < 0:
        raise OptionError(f"{option}: {key}={raw}: must not be negative")
    return number


# ----------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class TcpEndpoint:
    """``type=tcp``: listen on ``bindaddr``:``port``."""

    port: int
    bindaddr: str = DEFAULT_BINDADDR

    def describe(self) -> str:
        """The endpoint in words, for logs."""
        return f"tcp {self.bindaddr}:{self.port}"


@dataclass(frozen=True)
class UnixEndpoint:
    """``type=unixio,path=P``: listen on a Unix socket, with its mode and optional owner."""

    path: str
    mode: int = 0o600  # owner only unless asked: the socket gives full control of the TPM
    uid: int | None = None
    gid: int | None = None

    def describe(self) -> str:
        """The endpoint in words, for logs."""
        return f"unix {self.path}"


@dataclass(frozen=True)
class FdEndpoint:
    """A socket inherited from the parent: listening (``fd=``) or already connected (``clientfd=``)."""

    fd: int
    connected: bool = False

    def describe(self) -> str:
        """The endpoint in words, for logs."""
        return f"{'connection' if self.connected else 'listening socket'} on fd {self.fd}"


Endpoint = TcpEndpoint | UnixEndpoint | FdEndpoint

_SOCKET_KEYS = {"type": Kind.STRING, "path": Kind.STRING, "port": Kind.PORT, "bindaddr": Kind.STRING,
                "fd": Kind.INT, "mode": Kind.MODE, "uid": Kind.INT, "gid": Kind.INT}
CTRL_KEYS = {**_SOCKET_KEYS, "clientfd": Kind.INT, "terminate": Kind.FLAG}
SERVER_KEYS = {**_SOCKET_KEYS, "disconnect": Kind.FLAG}


def _endpoint(option: str, values: dict[str, object], *, default_port: int | None) -> Endpoint:
    kind = values.get("type", "tcp")
    unix_only = [k for k in ("path", "mode", "uid", "gid", "clientfd") if k in values]
    tcp_only = [k for k in ("port", "bindaddr") if k in values]
    fds = [k for k in ("fd", "clientfd") if k in values]
    if len(fds) > 1:
        raise OptionError(f"{option}: fd and clientfd exclude each other")
    if kind == "unixio":
        if tcp_only:
            raise OptionError(f"{option}: {', '.join(tcp_only)} is for type=tcp")
        if fds:
            if "path" in values:
                raise OptionError(f"{option}: give path or {fds[0]}, not both")
            return FdEndpoint(int(values[fds[0]]), connected=fds[0] == "clientfd")  # type: ignore[call-overload]
        if "path" not in values:
            raise OptionError(f"{option}: type=unixio needs path=PATH")
        return UnixEndpoint(str(values["path"]), int(values.get("mode", 0o600)),  # type: ignore[call-overload]
                            values.get("uid"), values.get("gid"))  # type: ignore[arg-type]
    if kind == "tcp":
        wrong = [k for k in unix_only if k != "clientfd"]
        if wrong:
            raise OptionError(f"{option}: {', '.join(wrong)} is for type=unixio")
        if "clientfd" in values:
            raise OptionError(f"{option}: clientfd is for type=unixio")
        if "fd" in values:
            if tcp_only:
                raise OptionError(f"{option}: give port/bindaddr or fd, not both")
            return FdEndpoint(int(values["fd"]))  # type: ignore[call-overload]
        port = values.get("port", default_port)
        if port is None:
            raise OptionError(f"{option}: type=tcp needs port=N")
        return TcpEndpoint(int(port), str(values.get("bindaddr", DEFAULT_BINDADDR)))  # type: ignore[call-overload]
    raise OptionError(f"{option}: type={kind}: not tcp or unixio")


@dataclass(frozen=True)
class CtrlOption:
    """``--ctrl``: where the control channel listens (or the connection it is given)."""

    endpoint: Endpoint
    terminate: bool = False  # end the process when the control connection closes


@dataclass(frozen=True)
class ServerOption:
    """``--server``: where the data channel listens (or the connection it is given)."""

    endpoint: Endpoint
    disconnect: bool = False  # close the data connection after each response


def parse_ctrl(text: str) -> CtrlOption:
    """``--ctrl type=unixio|tcp,...``; OptionError if ``type`` is missing or a key does not fit the type."""
    values = parse_options("--ctrl", text, CTRL_KEYS)
    if "type" not in values:
        raise OptionError("--ctrl: give type=unixio or type=tcp")
    return CtrlOption(_endpoint("--ctrl", values, default_port=None), bool(values.get("terminate", False)))


def parse_server(text: str) -> ServerOption:
    """``--server ...`` (type=tcp, port 6321 by default, as swtpm); OptionError for keys that do not fit."""
    values = parse_options("--server", text, SERVER_KEYS)
    return ServerOption(_endpoint("--server", values, default_port=DEFAULT_SERVER_PORT),
                        bool(values.get("disconnect", False)))


# ----------------------------------------------------------------------------- state, flags, pid, log, migration


@dataclass(frozen=True)
class TpmStateOption:
    """``--tpmstate``: the state directory."""

    directory: Path


def parse_tpmstate(text: str) -> TpmStateOption:
    """``--tpmstate dir=DIR`` or ``backend-uri=dir://DIR``; OptionError for any other backend, a mode other
    than 0600 or ``lock=false`` (what this server would not honour)."""
    values = parse_options("--tpmstate", text, {"dir": Kind.STRING, "backend-uri": Kind.STRING, "mode": Kind.MODE,
                                                 "lock": Kind.FLAG, "fsync": Kind.FLAG})
    if ("dir" in values) == ("backend-uri" in values):
        raise OptionError("--tpmstate: give dir=DIR or backend-uri=dir://DIR")
    if "backend-uri" in values:
        uri = str(values["backend-uri"])
        if not uri.startswith("dir://"):
            raise OptionError(f"--tpmstate: backend-uri={uri}: only dir:// state directories are supported")
        directory = uri[len("dir://"):]
    else:
        directory = str(values["dir"])
    if not directory:
        raise OptionError("--tpmstate: the state directory is empty")
    mode = values.get("mode", STATE_FILE_MODE)
    if mode != STATE_FILE_MODE:
        raise OptionError(f"--tpmstate: mode={mode:04o}: state files are always written 0600 (owner only)")
    if values.get("lock") is False:
        raise OptionError("--tpmstate: lock=false: the state directory is always locked")
    return TpmStateOption(Path(directory))


class Startup(enum.Enum):
    """Which TPM2_Startup the server sends by itself (``--flags startup-*``); NONE leaves it to the OS."""

    NONE = "none"
    CLEAR = "clear"
    STATE = "state"


@dataclass(frozen=True)
class FlagsOption:
    """``--flags``: power-on behaviour."""

    need_init: bool = True  # wait for CMD_INIT before accepting TPM commands
    startup: Startup = Startup.NONE  # TPM2_Startup sent by the server itself
    auto_shutdown: bool = True  # send TPM2_Shutdown(CLEAR) before a reset or the end, if the OS did not


def parse_flags(text: str | None) -> FlagsOption:
    """``--flags`` (None: swtpm's defaults); a startup flag implies not-need-init. OptionError for more than
    one startup flag or for startup-deactivated (TPM 1.2 only)."""
    if text is None:
        return FlagsOption()
    values = parse_options("--flags", text, {"not-need-init": Kind.FLAG, "startup-clear": Kind.FLAG,
                                             "startup-state": Kind.FLAG, "startup-none": Kind.FLAG,
                                             "startup-deactivated": Kind.FLAG, "disable-auto-shutdown": Kind.FLAG})
    if values.get("startup-deactivated"):
        raise OptionError("--flags: startup-deactivated is a TPM 1.2 startup type")
    chosen = [s for s in (Startup.CLEAR, Startup.STATE, Startup.NONE) if values.get(f"startup-{s.value}")]
    if len(chosen) > 1:
        raise OptionError("--flags: give one of startup-clear, startup-state, startup-none")
    startup = chosen[0] if chosen else Startup.NONE
    need_init = not values.get("not-need-init", False) and startup is Startup.NONE
    return FlagsOption(need_init, startup, not values.get("disable-auto-shutdown", False))


@dataclass(frozen=True)
class FileOrFd:
    """A file given by path or an inherited descriptor: exactly one is set."""

    path: Path | None = None
    fd: int | None = None


def _file_or_fd(option: str, values: dict[str, object]) -> FileOrFd:
    if ("file" in values) == ("fd" in values):
        raise OptionError(f"{option}: give file=PATH or fd=N")
    if "file" in values:
        return FileOrFd(path=Path(str(values["file"])))
    return FileOrFd(fd=int(values["fd"]))  # type: ignore[call-overload]


def parse_pid(text: str) -> FileOrFd:
    """``--pid file=PATH|fd=N``; OptionError unless exactly one is given."""
    return _file_or_fd("--pid", parse_options("--pid", text, {"file": Kind.STRING, "fd": Kind.INT}))


@dataclass(frozen=True)
class LogOption:
    """``--log``: where log lines go, how detailed, with which prefix."""

    target: FileOrFd
    level: int = 1  # swtpm's levels: 1 is errors and notices; 2 and higher add per-connection detail
    prefix: str = ""
    truncate: bool = False

    @property
    def discard(self) -> bool:
        """``file=-``: log nothing."""
        return self.target.path is not None and str(self.target.path) == "-"


def parse_log(text: str) -> LogOption:
    """``--log file=PATH|fd=N[,level=N][,prefix=P][,truncate]``; OptionError unless one target is given."""
    values = parse_options("--log", text, {"file": Kind.STRING, "fd": Kind.INT, "level": Kind.INT,
                                           "prefix": Kind.STRING, "truncate": Kind.FLAG})
    return LogOption(_file_or_fd("--log", values), int(values.get("level", 1)),  # type: ignore[call-overload]
                     str(values.get("prefix", "")), bool(values.get("truncate", False)))


@dataclass(frozen=True)
class MigrationOption:
    """``--migration``: how the state's lock moves during a live migration."""

    incoming: bool = False  # take the storage lock only when the state arrives (or QEMU asks)
    release_lock_outgoing: bool = False  # accepted; the lock is always released after the last blob


def parse_migration(text: str | None) -> MigrationOption:
    """``--migration incoming,release-lock-outgoing`` (None: neither); OptionError for other keys."""
    if text is None:
        return MigrationOption()
    values = parse_options("--migration", text, {"incoming": Kind.FLAG, "release-lock-outgoing": Kind.FLAG})
    return MigrationOption(bool(values.get("incoming", False)), bool(values.get("release-lock-outgoing", False)))
