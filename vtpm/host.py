"""`vtpm host`: one process, one event-loop thread, many vTPMs.

Each hosted vTPM has its own endpoints (a Unix control socket for QEMU's
CMD_SET_DATAFD, an optional Unix data socket, an optional TCP pair) on the
shared ``vtpm.server.loop.Loop``. Adding a vTPM opens its store (for a VM:
checks its files, unlocks its key and takes the VM's lock) but reads no
state: the TPM state is loaded at its first command, control or data.
Every change is journaled (``vtpm.journal_store``): the engine only seals a
record, and the loop's commit hook writes the records of every vTPM changed
in that iteration and syncs those journals (in parallel threads) once, before
the iteration's responses leave. Replies of vTPMs with nothing to commit are
sent before the sync, so a neighbour's write does not hold them up. A vTPM
whose commit fails answers ``TPM_RC_NV_UNAVAILABLE`` for that iteration; its
unacknowledged records are erased and its in-memory state dropped (reloaded
from the store at the next command), so nothing a client was told failed is
persisted later. Idle vTPMs' journals are folded a few at a time by a
periodic task; an idle vTPM whose TPM is not started (or stopped) is folded
and evicted from memory and loaded again later. Removing one sends Shutdown
if the OS did not, folds, closes its sockets and releases the store (and with
it the VM's lock).

The host is driven over its own Unix socket (mode 0600, peers of another
uid refused) with one JSON object per line each way (``vtpm.host_protocol``).
Work runs on the loop thread: a slow or silent client holds only its own
buffer, and the loop drops it at its deadline.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtpm import wire
from vtpm.constants import RC
from vtpm.engine import Tpm
from vtpm.journal_store import IDLE_FOLD_SECONDS, GroupCommitError, JournaledStore, JournalGroup
from vtpm.host_protocol import MAX_LINE, AddRequest, ProtocolError, parse_add  # noqa: F401  (AddRequest: cli)
from vtpm.server.device import TpmDevice
from vtpm.server import swtpm_ctrl
from vtpm.server.endpoints import bind_unix
from vtpm.server.loop import Connection, ControlConnection, Endpoints, Loop, Reply, SwtpmEndpoints
from vtpm.server.state_lock import GuardedStore, lock_for
from vtpm.state import TpmState
from vtpm.storage import StateStore, StateStoreError

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 10.0  # seconds a control client may take to finish a request line
FOLD_CHECK_SECONDS = 0.5  # how often idle journals are looked at (one fold per look)


class HostRefusal(Exception):
    """A control request that is refused; the message goes back to the client."""


OpenStore = Callable[[AddRequest], StateStore]


@dataclass
class _Platform:
    """What a platform remembers of an evicted vTPM: power, locality, buffer size, established flag."""

    running: bool = True
    locality: int = 0
    established: bool = False
    buffer_size: int = 0


@dataclass
class HostedVtpm:
    """One vTPM of the host: its store, its endpoints and, once used, its engine."""

    name: str
    store: StateStore
    key: str  # the real path of what it serves: one vTPM per VM or state directory
    startup_clear: bool = False
    endpoints: SwtpmEndpoints | None = None
    loaded: TpmDevice | None = None
    loads: int = 0
    last_used: float = field(default_factory=time.monotonic)
    platform: _Platform | None = None
    journaled: JournaledStore | None = None  # the store's journal (None: a store without one)
    failed: str | None = None  # its journal could not be repaired: out of service until removed
    guard: GuardedStore = field(init=False)

    def __post_init__(self) -> None:
        # a state directory's lock, as `vtpm socket` takes it (a VM's store holds the VM's lock itself);
        # never waited for: the loop thread serves every other vTPM meanwhile
        self.guard = GuardedStore(self.store, lock_for(self.store), max_retries=0)

    def journal_with(self, journaled: JournaledStore) -> None:
        """Changes go to ``journaled`` (one record each, committed with the host's group)."""
        self.journaled = journaled
        self.guard.journal = journaled

    def take_lock(self) -> None:
        """One server per state directory: refused (StateInUseError) while another holds it."""
        if self.guard.lock is not None:
            self.guard.lock.acquire_or_raise()

    def device(self) -> TpmDevice:
        """The TPM, loaded from the store at first use (manufactured if the store is empty)."""
        self.last_used = time.monotonic()
        if self.loaded is not None:
            return self.loaded
        if self.failed is not None:
            raise StateStoreError(self.failed)
        if self.journaled is None:
            state = self.store.load()
        elif self.guard.held:
            state = self.journaled.load()
        else:  # an incoming migration: read only; the source may still be writing this journal
            state = self.journaled.peek()
        if state is None:
            state = TpmState.manufacture()
            self.guard.save(state.to_bytes())  # not while an incoming migration waits for the lock
        tpm = Tpm(state, persist=self.guard)
        if self.startup_clear and self.loads == 0:
            tpm.execute(0, wire.STARTUP_CLEAR)
        device = TpmDevice(tpm, name=self.name, storage=self.guard, on_terminate=self.terminate)
        if self.platform is not None:
            device.running = self.platform.running
            device.locality = self.platform.locality
            device.established = self.platform.established
            if self.platform.buffer_size:
                device.buffer_size = self.platform.buffer_size
        self.loaded = device
        self.loads += 1
        return device

    def evictable(self, idle: float, now: float) -> bool:
        """Nothing would be lost: no connection, idle long enough, and no started TPM (or a stopped one)."""
        device = self.loaded
        if device is None or now - self.last_used < idle:
            return False
        if self.endpoints is not None and self.endpoints.connections:
            return False
        return not device.running or not device.tpm.volatile.started

    def evict(self) -> None:
        """Fold the journal (the store then holds everything) and drop the state from memory."""
        device = self.loaded
        if device is None:
            return
        if self.journaled is not None:
            self.journaled.unload()  # raises (nothing evicted) when the fold fails
        self.platform = _Platform(device.running, device.locality, device.established, device.buffer_size)
        self.loaded = None

    def commit_failed(self) -> None:
        """Its journal commit failed: its clients were told NV_UNAVAILABLE, so the in-memory state
        (holding those changes) is dropped and the unacknowledged records erased; the next command
        loads what was acknowledged. If even the erase fails, the vTPM stays out of service."""
        device = self.loaded
        self.loaded = None
        if device is not None:
            self.platform = _Platform(device.running, device.locality, device.established, device.buffer_size)
        assert self.journaled is not None
        try:
            self.journaled.drop_unacknowledged()
        except Exception as exc:  # noqa: BLE001 - the disk refuses even zeros
            self.failed = f"{self.name}: the state journal failed and could not be repaired ({type(exc).__name__})"
            log.error("%s; remove and add the vTPM again once the storage works", self.failed)

    def terminate(self) -> None:
        """CMD_SHUTDOWN on its control channel (or its state's lock lost to another server): the TPM is
        stopped and saved (unless the lock went to a migration target) and its connections end; it stays
        added with its sockets, so a restarted QEMU can connect again, until ``remove``."""
        if self.loaded is not None:
            self.loaded.stop()
            self.loaded.tpm.flush_state()
        if self.endpoints is not None:
            self.endpoints.drop_connections()

    def close(self) -> str | None:
        """Stop (Shutdown if the OS did not), save, close the sockets, release the store; a problem, if any."""
        problem = None
        if self.endpoints is not None:
            self.endpoints.close()
        try:
            if self.loaded is not None:
                self.loaded.stop()
                self.loaded.tpm.flush_state()
        except Exception as exc:
            problem = f"state not saved: {exc}"
        self.loaded = None
        # the journal is folded while the lock is held (a handed-over one is left alone), then the store closes
        release = self.guard.close if self.journaled is not None else getattr(self.store, "close", None)
        if release is not None:
            try:
                release()
            except Exception as exc:
                problem = problem or f"store not released: {exc}"
        if self.guard.lock is not None:
            self.guard.lock.release()
        return problem

    @property
    def running(self) -> bool:
        """The TPM is powered (CMD_INIT and no CMD_STOP / CMD_SHUTDOWN since), loaded or evicted."""
        if self.loaded is not None:
            return self.loaded.running
        return self.platform is not None and self.platform.running

    def describe(self, now: float) -> dict[str, Any]:
        """The vTPM's row of ``list``: store, endpoints, whether loaded and running, connections, idle time."""
        endpoints = self.endpoints.endpoints if self.endpoints is not None else Endpoints()
        return {
            "name": self.name,
            "store": self.store.describe(),
            "ctrl_unix": endpoints.ctrl_unix,
            "data_unix": endpoints.data_unix,
            "tcp_host": endpoints.tcp_host if endpoints.tcp_port is not None else None,
            "tcp_port": endpoints.tcp_port,
            "loaded": self.loaded is not None,
            "running": self.running,
            "loads": self.loads,
            "connections": len(self.endpoints.connections) if self.endpoints is not None else 0,
            "idle_seconds": round(now - self.last_used, 3),
        }


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlLineConnection(Connection):
    """The host's control protocol: one JSON request per line, one JSON answer per line."""

    timeout_when_partial = CONTROL_TIMEOUT

    def __init__(self, loop: Loop, sock: socket.socket, host: "VtpmHost") -> None:
        super().__init__(loop, sock)
        self.host = host

    def process(self) -> None:
        """Answer each complete request line received, one at a time (the next waits for the answer to go out)."""
        buf = self.inbuf
        while not self.closed and not self.outbuf:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE:
                    buf.clear()
                    self.host.answer(self, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"},
                                     then_close=True)
                return
            line = bytes(buf[:end])
            del buf[: end + 1]
            self._partial_deadline = False
            self.host.answer(self, self.host.handle_line(line))


class VtpmHost:
    """The hosted vTPMs, their loop and the host's control socket."""

    def __init__(self, control_path: str, open_store: OpenStore, *, evict_after: float | None = None,
                 exit_when_empty: bool = False, idle_timeout: float | None = None) -> None:
        self.control_path = control_path
        self.open_store = open_store
        self.evict_after = evict_after
        self.exit_when_empty = exit_when_empty
        self.group = JournalGroup()
        self.loop = Loop(idle_timeout=idle_timeout, commit=self.commit)
        self.vtpms: dict[str, HostedVtpm] = {}
        self._by_journal: dict[JournaledStore, HostedVtpm] = {}  # whose journal it is (a commit's dirty stores)
        self.idle_fold_seconds = IDLE_FOLD_SECONDS
        self._lock_fd: int | None = None
        self._control = None
        self.uid = os.getuid()
        if evict_after is not None:
            self.loop.every(max(0.05, min(evict_after / 2, 5.0)), self.evict_idle)
        self.loop.every(FOLD_CHECK_SECONDS, self.fold_idle)

    # ------------------------------------------------------------------ life

    def bind(self) -> None:
        """Take the host's lock (one host per socket) and listen on the control socket (0600)."""
        parent = Path(self.control_path).parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(f"{self.control_path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HostRefusal(f"another vtpm host serves {self.control_path}") from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._control = self.loop.listen(bind_unix(self.control_path), self._accept_control, self.control_path)

    def _accept_control(self, sock: socket.socket) -> Connection | None:
        try:
            uid = _peer_uid(sock)
        except OSError:
            uid = -1
        if uid not in (self.uid, 0):  # the socket is 0600 already; this holds even if its mode is changed
            log.warning("control connection of uid %d refused", uid)
            sock.close()
            return None
        return ControlLineConnection(self.loop, sock, self)

    def run(self) -> None:
        """Serve until ``stop`` (or a request that ends the host)."""
        self.loop.run()

    def stop(self) -> None:
        """Make ``run`` return after the current loop iteration."""
        self.loop.stop()

    def close(self) -> list[str]:
        """Remove every vTPM (each saved and released), close the control socket, drop the lock."""
        problems = []
        for name in list(self.vtpms):
            problem = self._close(self.vtpms.pop(name))
            if problem:
                problems.append(f"{name}: {problem}")
        self.group.close()
        if self._control is not None:
            self._control.close()
            self._control = None
        self.loop.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        return problems

    # ------------------------------------------------------------------ the control protocol

    def answer(self, conn: Connection, answer: dict[str, Any], *, then_close: bool = False) -> None:
        """Queue ``answer`` as one JSON line to ``conn``; optionally close it (or stop the host) once sent."""
        after = conn.close if then_close else None
        if answer.pop("_stop_after", False):
            after = self.stop
        self.loop.reply(Reply(conn, json.dumps(answer, separators=(",", ":")).encode() + b"\n", after=after))

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line; malformed or refused requests get ``ok: false`` and a reason."""
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {"ok": False, "error": "not a JSON object on one UTF-8 line"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "a request is a JSON object with an \"op\""}
        op = request["op"]
        answer = self._dispatch(op, request)
        if op in ("add", "remove") and self.exit_when_empty and not self.vtpms:
            answer["_stop_after"] = True  # its last vTPM was removed, or the first add was refused
        return answer

    def _dispatch(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        try:
            if op == "ping":
                return {"ok": True, "pid": os.getpid(), "vtpms": len(self.vtpms)}
            if op == "list":
                now = time.monotonic()
                return {"ok": True, "vtpms": [v.describe(now) for v in self.vtpms.values()]}
            if op == "add":
                return {"ok": True, "vtpm": self.add(parse_add(request))}
            if op == "remove":
                name = request.get("name")
                if not isinstance(name, str):
                    raise ProtocolError("remove needs a \"name\"")
                return self.remove(name)
            raise ProtocolError(f"unknown op {op!r} (add, remove, list, ping)")
        except (ProtocolError, HostRefusal, StateStoreError, OSError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a store's own failure (e.g. a VM refused): its message, never a traceback
            log.info("add refused: %s", exc)
            return {"ok": False, "error": str(exc) or type(exc).__name__}

    def add(self, request: AddRequest) -> dict[str, Any]:
        """Serve a new vTPM on the request's endpoints; refused when the name or its store is already hosted."""
        if request.name in self.vtpms:
            raise HostRefusal(f"a vTPM named {request.name!r} is already hosted")
        key = request.store_key()
        for other in self.vtpms.values():
            if other.key == key:
                raise HostRefusal(f"{key} is already served by the vTPM {other.name!r}")
        store = self.open_store(request)
        hosted = HostedVtpm(request.name, store, key, startup_clear=request.startup_clear)
        try:
            if not request.incoming:
                hosted.take_lock()
            if hasattr(store, "journal_binding"):
                hosted.journal_with(self.group.add(JournaledStore(store)))  # type: ignore[arg-type]
                self._by_journal[hosted.journaled] = hosted  # type: ignore[index]
            hosted.endpoints = SwtpmEndpoints(self.loop, hosted.device, request.endpoints,
                                              on_terminate=hosted.terminate)
        except BaseException:
            self._close(hosted)
            raise
        self.vtpms[request.name] = hosted
        return hosted.describe(time.monotonic())

    def remove(self, name: str) -> dict[str, Any]:
        """Stop serving ``name``: its state is saved and its sockets closed."""
        hosted = self.vtpms.pop(name, None)
        if hosted is None:
            raise HostRefusal(f"no vTPM named {name!r} is hosted")
        problem = self._close(hosted)
        answer: dict[str, Any] = {"ok": problem is None, "removed": name}
        if problem:
            answer["error"] = problem
        return answer

    def _close(self, hosted: HostedVtpm) -> str | None:
        if hosted.journaled is not None:
            self.group.discard(hosted.journaled)  # its close folds the whole state, pending records included
            self._by_journal.pop(hosted.journaled, None)
        return hosted.close()

    def commit(self, replies: list[Reply]) -> None:
        """The loop's commit hook: send the replies of vTPMs with nothing to commit, then write and
        sync every dirty journal at once; the replies of a vTPM whose commit failed become
        NV_UNAVAILABLE (and it drops its state, see ``HostedVtpm.commit_failed``)."""
        dirty = set()
        for store in self.group.pending_stores():  # the vTPMs changed in this iteration, not all of them
            hosted = self._by_journal.get(store)
            if hosted is not None and hosted.loaded is not None:
                dirty.add(id(hosted.loaded))
        if not dirty:
            return
        waiting = []
        for reply in replies:  # sent now: their vTPM has nothing to commit, its earlier changes are synced
            if reply.device is not None and id(reply.device) in dirty:
                waiting.append(reply)
            else:
                reply.conn.write(reply.response)
                if reply.after is not None:
                    reply.after()
        replies[:] = waiting  # the loop sends these once this returns
        try:
            self.group.commit()
        except GroupCommitError as exc:
            log.error("%s", exc)
            failed_devices = set()
            for store in exc.failed:
                hosted = self._by_journal.get(store)
                if hosted is not None:
                    failed_devices.add(id(hosted.loaded))
                    hosted.commit_failed()
            failed = wire.error_response(RC.NV_UNAVAILABLE)
            ctrl_failed = swtpm_ctrl.TPM_FAIL.to_bytes(4, "big")
            for reply in waiting:
                if id(reply.device) in failed_devices:
                    reply.response = ctrl_failed if isinstance(reply.conn, ControlConnection) else failed

    def fold_idle(self) -> None:
        """Fold one idle vTPM's journal per call (the loop is held for one fold at a time)."""
        try:
            self.group.fold_idle(self.idle_fold_seconds)
        except Exception as exc:  # noqa: BLE001 - retried at the next call; the records stay durable
            log.warning("folding an idle journal failed: %s", type(exc).__name__)

    def evict_idle(self) -> None:
        """Drop from memory the state of vTPMs idle longer than ``evict_after`` (reloaded on next use)."""
        now = time.monotonic()
        for hosted in self.vtpms.values():
            if hosted.evictable(self.evict_after or 0.0, now):
                try:
                    hosted.evict()
                except Exception as exc:  # noqa: BLE001 - kept in memory; tried again later
                    log.warning("%s not evicted: the fold failed (%s)", hosted.name, type(exc).__name__)


# ----------------------------------------------------------------------------- the command line


def add_parser(commands: Any, open_store: Callable[[argparse.Namespace, AddRequest], StateStore]) -> None:
    """Add ``vtpm host`` to the command line; ``open_store`` opens the store an add request names."""
    host = commands.add_parser(
        "host", help="serve many vTPMs from one process",
        description="Serve many vTPMs on one event loop; add and remove them over the control socket.")
    host.add_argument("--socket", required=True, metavar="PATH", help="the host's control socket (0600)")
    host.add_argument("--evict-after", type=float, metavar="SECONDS",
                      help="drop an idle vTPM's state from memory after this long (it is reloaded when used)")
    host.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                      help="close a connection that sends nothing for this long (default: never; QEMU keeps its "
                           "connections open while the guest does not use the TPM)")
    host.add_argument("--exit-when-empty", action="store_true",
                      help="end when an add or remove leaves no vTPM (the last one removed, or the first add refused)")
    host.add_argument("-v", "--verbose", action="store_true", help="log each connection problem")
    host.set_defaults(func=lambda args, store: cmd_host(args, lambda request: open_store(args, request)),
                      opens_store=False, prints_json=False)


def cmd_host(args: argparse.Namespace, open_store: OpenStore) -> int:
    """Run ``vtpm host`` until it is stopped; its exit status."""
    for option, value in (("--evict-after", args.evict_after), ("--idle-timeout", args.idle_timeout)):
        if value is not None and not 0 < value <= 86400:
            raise StateStoreError(f"{option} must be between 0 and 86400 seconds")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # two listening sockets per vTPM, plus its connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host = VtpmHost(os.path.abspath(args.socket), open_store, evict_after=args.evict_after,
                    exit_when_empty=args.exit_when_empty, idle_timeout=args.idle_timeout)
    try:
        host.bind()
    except HostRefusal as exc:
        print(f"error: vtpm host: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: host.stop())
    print(f"vtpm host: serving on {host.control_path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        host.run()
    finally:
        problems = host.close()
    for problem in problems:
        print(f"vtpm host: {problem}", file=sys.stderr)
    print("vtpm host: stopped, every vTPM saved", file=sys.stderr, flush=True)
    return 1 if problems else 0


def open_plain(args: argparse.Namespace, request: AddRequest) -> StateStore:
    """The store of ``python -m vtpm host``: plain state directories only."""
    from vtpm.storage import PlainStateStore

    if request.vm is not None or request.key_file is not None:
        raise StateStoreError("vm and key_file (encrypted state) need the `vtpm` command "
                              "(python -m vmcrypt.vtpm_command)")
    if request.state is None:
        raise StateStoreError("give a state directory")
    return PlainStateStore(request.state)


def namespace_for(args: argparse.Namespace, request: AddRequest) -> argparse.Namespace:
    """The ``serve`` options naming the request's store, for a ``StoreOptions.open``."""
    return argparse.Namespace(state=request.state, vm=request.vm, key_file=request.key_file,
                              home=getattr(args, "home", None))

