"""`vtpm socket`: a vTPM started the way libvirt and QEMU start ``swtpm socket``.

The command line takes swtpm's options (parsed by ``swtpm_options``); this
module turns them into a running server: the state's lock, the engine, the
listening sockets, the log, the pid file, ``--daemon`` and the end of the
process (signals, CMD_SHUTDOWN, ``--terminate``).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from durable.atomic import write_atomic
from vtpm import wire
from vtpm.engine import Tpm
from vtpm.journal_store import JournaledStore
from vtpm.server.device import TpmDevice
from vtpm.server.state_lock import GuardedStore, lock_for
from vtpm.server.swtpm_options import (
    CtrlOption,
    FileOrFd,
    FlagsOption,
    LogOption,
    MigrationOption,
    ServerOption,
    Startup,
)
from vtpm.server.swtpm_socket import SocketServer
from vtpm.state import TpmState
from vtpm.storage import StateStore, StateStoreError

log = logging.getLogger("vtpm.socket")

#: what `vtpm socket --print-capabilities` announces: only what is implemented (names as swtpm's)
FEATURES = (
    "tpm-2.0",
    "flags-opt-startup",  # --flags startup-clear|startup-state|startup-none
    "flags-opt-disable-auto-shutdown",
    "ctrl-opt-terminate",  # --ctrl ...,terminate
    "cmdarg-migration",  # --migration incoming,release-lock-outgoing
    "nvram-backend-dir",  # --tpmstate backend-uri=dir://
    "tpmstate-opt-lock",  # --tpmstate ...,lock (always locked)
    "tpmstate-dir-backend-opt-fsync",  # --tpmstate ...,fsync (always synced)
    "rsa-keysize-1024", "rsa-keysize-2048", "rsa-keysize-3072", "rsa-keysize-4096",
)
STARTUP_COMMANDS = {Startup.CLEAR: wire.STARTUP_CLEAR, Startup.STATE: wire.STARTUP_STATE}


def version() -> str:
    """The installed package's version, reported as swtpm reports its own ("0+unknown" from a checkout)."""
    try:
        return importlib.metadata.version("vmcrypt")
    except importlib.metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "0+unknown"


def capabilities_json() -> str:
    """``--print-capabilities``' JSON: the swtpm feature names this server implements, so that libvirt and
    swtpm_setup choose only options it takes."""
    return json.dumps({"type": "swtpm", "features": list(FEATURES), "version": version()})


@dataclass
class SocketOptions:
    """`vtpm socket`'s options after parsing (the state itself comes as a StateStore)."""

    ctrl: CtrlOption | None
    server: ServerOption | None
    flags: FlagsOption = field(default_factory=FlagsOption)
    migration: MigrationOption = field(default_factory=MigrationOption)
    terminate: bool = False  # --terminate: end when a data connection closes
    daemon: bool = False
    pid: FileOrFd | None = None
    log: LogOption | None = None


class SocketError(StateStoreError):
    """The server cannot start (reported as ``error: vtpm socket: ...``, exit status 1)."""


def configure_logging(option: LogOption | None, verbose: bool = False) -> None:
    """Where the server logs: ``--log file=F|fd=N[,level=N][,prefix=P][,truncate]``, else stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    level = logging.DEBUG if verbose or (option is not None and option.level >= 2) else logging.INFO
    prefix = option.prefix if option is not None else ""
    if option is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    elif option.discard:
        handler = logging.NullHandler()
    else:
        stream: TextIO
        if option.target.path is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if option.truncate else os.O_APPEND)
            stream = os.fdopen(os.open(option.target.path, flags, 0o600), "a", buffering=1)
        else:
            stream = os.fdopen(option.target.fd, "a", buffering=1)  # type: ignore[arg-type]
        handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"{prefix}vtpm: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def _write_pid(option: FileOrFd, pid: int) -> None:
    text = f"{pid}\n".encode()
    if option.path is not None:
        write_atomic(option.path, text, mode=0o644)
    else:
        os.write(option.fd, text)  # type: ignore[arg-type]
        os.close(option.fd)  # type: ignore[arg-type]


def _daemonize() -> int:
    """Fork; the parent waits until the child serves and exits 0 (or 1 if the child failed). The child's
    end of the pipe is returned: write one byte to it once serving."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        ready = os.read(read_end, 1)
        if ready != b"1":
            print("error: vtpm socket: the daemon ended before it was serving; see its log", file=sys.stderr)
        os._exit(0 if ready == b"1" else 1)
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return write_end


def run(options: SocketOptions, store: StateStore) -> int:
    """Serve until CMD_SHUTDOWN, a signal, or what ``--terminate`` / ``--ctrl ...,terminate`` ask for."""
    if options.ctrl is None and options.server is None:
        raise SocketError("give --ctrl and/or --server: there is nothing to listen on")
    # journaled like `vtpm serve`: each change one record and one fdatasync before the response
    journal = JournaledStore(store) if hasattr(store, "journal_binding") else None  # type: ignore[arg-type]
    guard = GuardedStore(store, lock_for(store), journal)
    if guard.lock is not None and not options.migration.incoming:
        guard.lock.acquire_or_raise()
    if journal is None:
        state = store.load()
    elif guard.held:
        state = journal.load()
    else:  # an incoming migration: read only; the source may still be writing this journal
        state = journal.peek()
    created = state is None
    if state is None:
        state = TpmState.manufacture()
    tpm = Tpm(state, persist=guard)
    if created:
        guard.persist_state(state)  # not while an incoming migration waits for the lock
    stop = threading.Event()
    device = TpmDevice(tpm, running=not options.flags.need_init, storage=guard,
                       auto_shutdown=options.flags.auto_shutdown, on_terminate=stop.set)
    startup = STARTUP_COMMANDS.get(options.flags.startup)
    if startup is not None:
        response = device.execute(startup)
        if response[6:10] != bytes(4):
            raise SocketError(f"Startup({options.flags.startup.value.upper()}) failed: 0x{response[6:10].hex()}")
    server = SocketServer(
        device,
        ctrl=options.ctrl.endpoint if options.ctrl else None,
        data=options.server.endpoint if options.server else None,
        terminate_on_data_close=options.terminate,
        terminate_on_ctrl_close=bool(options.ctrl and options.ctrl.terminate),
        disconnect=bool(options.server and options.server.disconnect),
    )
    try:
        server.bind()
    except OSError as exc:
        raise SocketError(f"cannot listen: {exc}") from None
    ready_fd = _daemonize() if options.daemon else None
    try:
        if options.pid is not None:
            _write_pid(options.pid, os.getpid())
        server.start()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: stop.set())
        where = " and ".join(
            f"{name} {endpoint.describe()}" for name, endpoint in
            (("data", options.server.endpoint if options.server else None),
             ("ctrl", options.ctrl.endpoint if options.ctrl else None)) if endpoint is not None)
        log.info("%s %s", "manufactured a new TPM in" if created else "loaded", store.describe())
        log.info("serving on %s%s", where, "" if device.running else " (waiting for CMD_INIT)")
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
            ready_fd = None
        while not stop.wait(0.1):
            if server.terminate.is_set():
                break
            if journal is not None:
                with device.lock:
                    if guard.held:
                        journal.fold_if_idle()
    finally:
        server.close()
        with device.lock:
            device.stop()
            tpm.flush_state()
            guard.close()
        if options.pid is not None and options.pid.path is not None:
            Path(options.pid.path).unlink(missing_ok=True)
        if ready_fd is not None:
            os.close(ready_fd)
    log.info("stopped%s", ", state saved" if guard.held else " (the state belongs to the migration target)")
    return 0


__all__ = ["SocketOptions", "SocketError", "capabilities_json", "configure_logging", "run"]
