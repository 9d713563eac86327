"""One thread, many sockets: the swtpm data and control protocols on a epoll event loop (``select.epoll``).

Every socket is non-blocking and belongs to one ``Loop``. A connection keeps
its own bounded input buffer, so a client that sends half a command and goes
silent costs that buffer and nothing else: the loop drops it when its
deadline (mid-command, or idle when configured) passes, while every other
connection is served. Commands run on the loop thread, one at a time.

The persistence seam: a command's response is not written at once. Each
loop iteration executes every command that became complete, collects the
answers as ``Reply`` objects, calls the loop's ``commit`` hook once with all
of them, and only then sends them. The default hook does nothing (a
``Tpm.execute`` that saves its own state): with it, a data connection that
reads one whole command with nothing else held answers it at once, without a
``Reply`` (the common case, and the shortest path); `vtpm host` passes its journal
group's commit: every vTPM dirtied in the iteration has staged one journal
record, the hook writes and syncs them in one round (``JournalGroup.commit``)
and, where that fails, replaces the replies of the vTPMs concerned with
``TPM_RC_NV_UNAVAILABLE``. No response leaves before the hook has returned.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vtpm import wire
from vtpm.constants import RC
from vtpm.server import swtpm_ctrl
from vtpm.server.device import TpmDevice
from vtpm.server.endpoints import Endpoints, bind_unix
from vtpm.server.sockets import recv_with_fds

log = logging.getLogger(__name__)

HEADER_SIZE = wire.HEADER_SIZE
MAX_WIRE_COMMAND = 64 * 1024  # a command larger than this is refused and the connection dropped
MID_COMMAND_TIMEOUT = 10.0  # seconds a client may take to finish a command it started
MAX_CONNECTIONS = 4096  # beyond this, new connections are closed at once
RECV_SIZE = 65536
CTRL_COMMIT_FAILED = swtpm_ctrl.TPM_FAIL.to_bytes(4, "big")  # a control answer whose state could not be made durable

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
DeviceSource = Callable[[], TpmDevice]  # the device a connection serves; the host loads it at first use


@dataclass(slots=True)
class Reply:
    """A response waiting for the end of the loop iteration (see the module's persistence seam)."""

    conn: "Connection"
    response: bytes
    device: TpmDevice | None = None  # the vTPM whose state the command may have changed
    after: Callable[[], None] | None = None  # run once the response was handed to the socket
    failed: bytes | None = None  # the answer when the commit fails (None: TPM_RC_NV_UNAVAILABLE)


CommitHook = Callable[[list[Reply]], None]


def no_commit(replies: list[Reply]) -> None:
    """The default: ``Tpm.execute`` has already saved the state of every dirty vTPM."""


class Connection:
    """A non-blocking stream socket owned by a loop: buffered input, buffered output, a deadline."""

    timeout_when_partial = MID_COMMAND_TIMEOUT

    def __init__(self, loop: "Loop", sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closed = False
        self.deadline: float | None = None
        self.owner: object = None  # who to tell when it closes (a hosted vTPM keeps its connections)
        self.on_close: Callable[["Connection"], None] | None = None
        sock.setblocking(False)

    # ------------------------------------------------------------------ subclasses

    def process(self) -> None:
        """Consume complete requests from ``inbuf`` (queue replies with ``loop.reply``)."""
        raise NotImplementedError

    def receive(self) -> bytes:
        """One non-blocking read (b"" when the peer closed); subclasses may also take passed descriptors."""
        return self.sock.recv(RECV_SIZE)

    # ------------------------------------------------------------------ events

    def on_readable(self) -> None:
        """Read what arrived and process complete requests; a closed peer or a read error closes it."""
        data = self.read()
        if data is not None:
            self.take(data)

    def read(self) -> bytes | None:
        """One non-blocking ``receive``; None when nothing came, or when the peer closed or the read
        failed (the connection is then closed)."""
        try:
            data = self.receive()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self.close()
            return None
        if not data:
            self.close()
            return None
        return data

    def take(self, data: bytes) -> None:
        """Buffer ``data``, process the complete requests, and set the deadline the rest needs."""
        self.inbuf += data
        self.process()
        if self.holds_partial() or self.deadline is not None or self.loop.idle_timeout is not None:
            self.rearm()

    def holds_partial(self) -> bool:
        """Bytes of an unfinished request are held."""
        return bool(self.inbuf)

    def rearm(self) -> None:
        """Set the deadline: a partial request must complete in time; an idle connection may time out."""
        if self.closed:
            return
        if self.holds_partial():
            if self.deadline is None or not self._partial_deadline:
                self._set_deadline(self.timeout_when_partial, partial=True)
        elif self.loop.idle_timeout is not None:
            self._set_deadline(self.loop.idle_timeout, partial=False)
        else:
            self.deadline = None

    _partial_deadline = False

    def _set_deadline(self, seconds: float, *, partial: bool) -> None:
        self._partial_deadline = partial
        self.deadline = time.monotonic() + seconds
        self.loop.schedule(self)

    def on_deadline(self) -> None:
        """The deadline passed (a request left unfinished, or idle too long): drop the connection."""
        log.info("connection timed out%s", " mid-request" if self.holds_partial() else " (idle)")
        self.close()

    def write(self, data: bytes) -> None:
        """Send now as far as the socket takes it; the rest waits for writability (reading pauses)."""
        if self.closed:
            return
        if not self.outbuf:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            if sent == len(data):
                return
            data = data[sent:]
        self.outbuf += data
        self.loop.want_write(self, True)

    def on_writable(self) -> None:
        """Send more of the pending output; once it is all out, resume the requests that waited."""
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.outbuf[:sent]
        if not self.outbuf:
            self.loop.want_write(self, False)
            if self.holds_partial():  # requests that arrived while the answer was stuck
                self.process()
                self.rearm()

    @property
    def paused(self) -> bool:
        """Output is pending: read no further requests until the client takes its answers."""
        return bool(self.outbuf)

    def close(self) -> None:
        """Leave the loop, close the socket, drop the buffers and tell ``on_close``; repeated calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self.deadline = None
        self.loop.forget(self)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.inbuf.clear()
        self.outbuf.clear()
        if self.on_close is not None:
            self.on_close(self)


class DataConnection(Connection):
    """swtpm data channel: raw TPM commands in, responses out."""

    def __init__(self, loop: "Loop", sock: socket.socket, device: DeviceSource) -> None:
        super().__init__(loop, sock)
        self.device = device
        self.drop_after_reply = False

    def on_readable(self) -> None:
        """Read what arrived; the usual case (one whole command, nothing held or pending, the default commit
        hook) is executed and answered at once, without a queued ``Reply``; anything else is buffered and
        goes through ``process`` and the loop's commit seam."""
        data = self.read()
        if data is None:
            return
        loop = self.loop
        if (loop.commit is no_commit and not self.inbuf and not self.outbuf and not self.drop_after_reply
                and len(data) >= HEADER_SIZE and (data[2] << 24 | data[3] << 16 | data[4] << 8 | data[5]) == len(data)):
            self._partial_deadline = False
            self.write(self._execute(data)[0])
            if self.deadline is not None or loop.idle_timeout is not None:
                self.rearm()
            return
        self.take(data)

    def _execute(self, command: bytes) -> tuple[bytes, TpmDevice | None]:
        """The response to ``command`` and the device that ran it; TPM_RC_FAILURE (no device) when the
        vTPM's state cannot be loaded."""
        try:
            device = self.device()
        except Exception as exc:
            log.error("vTPM state not available: %s", exc)
            return wire.error_response(RC.FAILURE), None
        return device.execute(command), device

    def process(self) -> None:
        """Run every complete command in the buffer on the device and queue its response; a size field out
        of range is answered TPM_RC_COMMAND_SIZE and the connection dropped after that answer."""
        buf = self.inbuf
        while len(buf) >= HEADER_SIZE and not self.outbuf and not self.closed and not self.drop_after_reply:
            size = (buf[2] << 24) | (buf[3] << 16) | (buf[4] << 8) | buf[5]
            if size < HEADER_SIZE or size > MAX_WIRE_COMMAND:
                self.drop_after_reply = True  # the stream is out of step: answer once, then drop it
                buf.clear()
                self.loop.reply(Reply(self, wire.error_response(RC.COMMAND_SIZE), after=self.close))
                return
            available = len(buf)
            if available < size:
                return
            if available == size:  # the usual case: one whole command
                command = bytes(buf)
                buf.clear()
            else:
                command = bytes(buf[:size])
                del buf[:size]
            self._partial_deadline = False  # the next command gets its own deadline
            response, device = self._execute(command)
            self.loop.reply(Reply(self, response, device))


class ControlConnection(Connection):
    """swtpm control channel: requests framed by ``swtpm_ctrl.RequestReader``, answered by ``swtpm_ctrl.handle``.

    Framing, deadlines and results match the threaded ``SwtpmControlSession``:
    the rest of a request must come within 500 ms, but each read of a
    CMD_SET_STATEBLOB's blob data gets 10 s; ``close`` drops the connection
    after the answer, ``terminate`` ends the vTPM's serving (``on_terminate``).
    On a Unix socket, descriptors passed with a request (SCM_RIGHTS) are kept
    for that request: CMD_SET_DATAFD turns the first into a data connection;
    any other is closed once the request is answered.
    """

    timeout_when_partial = swtpm_ctrl.CTRL_REQUEST_TIMEOUT

    def __init__(self, loop: "Loop", sock: socket.socket, device: DeviceSource, *,
                 on_data_fd: Callable[[socket.socket], None], on_terminate: Callable[[], None]) -> None:
        super().__init__(loop, sock)
        self.device = device
        self.unix = sock.family == socket.AF_UNIX
        self.on_data_fd = on_data_fd
        self.on_terminate = on_terminate
        self.passed_fds: list[int] = []
        self.reader = swtpm_ctrl.RequestReader()

    def receive(self) -> bytes:
        """One read; on a Unix socket the descriptors passed with it are kept for the request."""
        if not self.unix:
            return self.sock.recv(RECV_SIZE)
        data, fds = recv_with_fds(self.sock, RECV_SIZE)
        self.passed_fds += fds
        return data

    def holds_partial(self) -> bool:
        """Unread bytes are buffered, or the request reader holds part of a request."""
        return bool(self.inbuf) or self.reader.partial

    def rearm(self) -> None:
        """While a state blob's data arrives each read gets the blob timeout; otherwise as any connection."""
        if not self.closed and self.reader.in_blob_data:
            self._set_deadline(swtpm_ctrl.CTRL_BLOB_TIMEOUT, partial=True)  # renewed by every read of blob data
            return
        super().rearm()

    def process(self) -> None:
        """Answer each complete request with ``swtpm_ctrl.handle``; after one that closes or terminates,
        nothing more is read."""
        if self.inbuf:
            self.reader.feed(bytes(self.inbuf))
            self.inbuf.clear()
        while not self.paused and not self.closed:
            message = self.reader.next_request()
            if message is None:
                return
            self._partial_deadline = False
            code, payload = int.from_bytes(message[:4], "big"), message[4:]
            try:
                device = self.device()
            except Exception as exc:
                log.error("vTPM state not available: %s", exc)
                self._close_fds()
                self.loop.reply(Reply(self, swtpm_ctrl.TPM_FAIL.to_bytes(4, "big")))
                continue
            result = swtpm_ctrl.take_data_fd(swtpm_ctrl.handle(device, code, payload, unix=self.unix),
                                             self.passed_fds, self.on_data_fd)
            self._close_fds()
            after = self._terminate if result.terminate else self.close if result.close else None
            self.loop.reply(Reply(self, result.response, device, after, failed=CTRL_COMMIT_FAILED))
            if after is not None:
                self.reader.clear()  # nothing after this request is read
                return

    def _terminate(self) -> None:
        self.close()
        self.on_terminate()

    def _close_fds(self) -> None:
        swtpm_ctrl.close_fds(self.passed_fds)

    def close(self) -> None:
        """Close descriptors passed and not taken, then the connection."""
        self._close_fds()
        super().close()


class Listener:
    """A listening socket in the loop; each accepted connection is made by ``factory``."""

    def __init__(self, loop: "Loop", sock: socket.socket, factory: Callable[[socket.socket], Connection | None],
                 path: str | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.path = path  # a Unix socket's path, removed on close
        self.closed = False
        sock.setblocking(False)

    def on_readable(self) -> None:
        """Accept up to 64 waiting connections; past the loop's connection limit they are closed at once."""
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            if self.loop.connection_count >= self.loop.max_connections:
                conn.close()
                continue
            made = self.factory(conn)  # None: refused (the factory closed it)
            if made is not None:
                self.loop.add(made)

    def close(self) -> None:
        """Stop listening; a Unix socket's path is removed if a socket still stands there."""
        if self.closed:
            return
        self.closed = True
        self.loop.forget(self)
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)


class Loop:
    """The event loop: epoll readiness, connection deadlines, periodic tasks and the commit hook."""

    def __init__(self, *, commit: CommitHook = no_commit, idle_timeout: float | None = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._poll = select.epoll()
        self._items: dict[int, Connection | Listener | None] = {}
        self.commit = commit
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connection_count = 0
        self._replies: list[Reply] = []
        self._deadlines: list[tuple[float, int, Connection]] = []
        self._seq = itertools.count()
        self._tasks: list[list] = []  # [next run, interval, function]
        self._stopping = False
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._register(self._wake_r.fileno(), None)

    # ------------------------------------------------------------------ registration

    def _register(self, fd: int, item: Connection | Listener | None) -> None:
        self._poll.register(fd, select.EPOLLIN)
        self._items[fd] = item

    def add(self, item: Connection | Listener) -> Connection | Listener:
        """Watch ``item``'s socket for input (a connection also gets its deadline); returned for chaining."""
        self._register(item.sock.fileno(), item)
        if isinstance(item, Connection):
            self.connection_count += 1
            item.rearm()
        return item

    def forget(self, item: Connection | Listener) -> None:
        """Stop watching ``item`` (called by its ``close``); an item not registered is ignored."""
        fd = item.sock.fileno()
        if fd < 0 or self._items.get(fd) is not item:
            return
        del self._items[fd]
        with contextlib.suppress(OSError, ValueError):
            self._poll.unregister(fd)
        if isinstance(item, Connection):
            self.connection_count -= 1

    def want_write(self, conn: Connection, on: bool) -> None:
        """While output is pending, wait for writability only (the client must read before it sends more)."""
        with contextlib.suppress(OSError, ValueError):
            self._poll.modify(conn.sock.fileno(), select.EPOLLOUT if on else select.EPOLLIN)

    def listen(self, sock: socket.socket, factory: Callable[[socket.socket], Connection | None],
               path: str | None = None) -> Listener:
        """Accept on ``sock`` in this loop, each connection made by ``factory``; ``path`` is removed on close."""
        listener = Listener(self, sock, factory, path)
        self.add(listener)
        return listener

    def schedule(self, conn: Connection) -> None:
        """Queue ``conn``'s current deadline; a superseded entry is skipped when it comes due."""
        if conn.deadline is not None:
            heapq.heappush(self._deadlines, (conn.deadline, next(self._seq), conn))

    def every(self, seconds: float, function: Callable[[], None]) -> None:
        """Run ``function`` on the loop thread about every ``seconds``."""
        self._tasks.append([time.monotonic() + seconds, seconds, function])

    def reply(self, reply: Reply) -> None:
        """Hold ``reply`` until the end of this iteration: it is sent after the commit hook."""
        self._replies.append(reply)

    def wake(self) -> None:
        """Make a waiting poll return (safe from other threads and signal handlers)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        """Make ``run`` return after the current iteration (safe from other threads and signal handlers)."""
        self._stopping = True
        self.wake()

    # ------------------------------------------------------------------ running

    def _next_due(self) -> float:
        nearest = time.monotonic() + 1.0
        if self._deadlines:
            nearest = min(nearest, self._deadlines[0][0])
        for task in self._tasks:
            nearest = min(nearest, task[0])
        return nearest

    def run_once(self, timeout: float | None = None) -> None:
        """One iteration: wait for events (until ``timeout``, else the next deadline or task), serve them,
        commit and send the replies, then run what came due. A connection's failure closes only it."""
        timed = bool(self._deadlines or self._tasks)
        due = self._next_due() if timed else 0.0
        if timeout is None:
            timeout = max(0.0, due - time.monotonic()) if timed else -1  # nothing due: wait for an event
        items = self._items
        for fd, mask in self._poll.poll(timeout):
            item = items.get(fd)
            if item is None:
                if fd == self._wake_r.fileno():
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                continue
            try:
                if mask & EPOLLOUT:
                    item.on_writable()  # type: ignore[union-attr]
                else:  # readable, hung up or in error: a read tells which
                    item.on_readable()
            except Exception:  # a bug met by one connection ends that connection, never the loop
                log.exception("connection failed")
                if isinstance(item, Connection):
                    item.close()
        if self._replies:
            self.flush_replies()
        if timed:
            now = time.monotonic()
            if now >= due:
                self._run_due(now)

    def _run_due(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, conn = heapq.heappop(self._deadlines)
            if conn.deadline == deadline and not conn.closed:
                conn.on_deadline()
        for task in self._tasks:
            if task[0] <= now:
                task[0] = now + task[1]
                try:
                    task[2]()
                except Exception:
                    log.exception("periodic task failed")
        if self._replies:
            self.flush_replies()

    def flush_replies(self) -> None:
        """The seam: commit once for the whole iteration, then send every reply."""
        replies, self._replies = self._replies, []
        try:
            if self.commit is not no_commit:
                self.commit(replies)
        except Exception:
            log.exception("commit failed: the replies report NV_UNAVAILABLE")
            failed = wire.error_response(RC.NV_UNAVAILABLE)
            for r in replies:
                if r.device is not None:
                    r.response = failed if r.failed is None else r.failed
        for r in replies:
            r.conn.write(r.response)
            if r.after is not None:
                r.after()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Iterate until ``stop`` is called or ``until()`` is true."""
        self._stopping = False
        while not self._stopping and not (until is not None and until()):
            self.run_once()

    def close(self) -> None:
        """Close every listener and connection and the poller; repeated calls do nothing."""
        if self._closed:
            return
        self._closed = True
        for item in list(self._items.values()):
            if item is not None:
                item.close()
        self._poll.close()
        self._wake_r.close()
        self._wake_w.close()


# ----------------------------------------------------------------------------- sockets


def bind_tcp(host: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening TCP socket (IPv6 when ``host`` has a colon, SO_REUSEADDR, TCP_NODELAY); OSError naming
    the address when it cannot be bound, with the socket closed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"tcp {host}:{port}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


# ----------------------------------------------------------------------------- one vTPM's endpoints


class SwtpmEndpoints:
    """One vTPM's listeners and connections on a loop, closed together."""

    def __init__(self, loop: Loop, device: DeviceSource, endpoints: Endpoints,
                 on_terminate: Callable[[], None]) -> None:
        self.loop = loop
        self.device = device
        self.endpoints = endpoints
        self.on_terminate = on_terminate
        self.listeners: list[Listener] = []
        self.connections: set[Connection] = set()
        try:
            if endpoints.data_unix is not None:
                self._listen(bind_unix(endpoints.data_unix), self._data, endpoints.data_unix)
            if endpoints.ctrl_unix is not None:
                self._listen(bind_unix(endpoints.ctrl_unix), self._ctrl, endpoints.ctrl_unix)
            if endpoints.tcp_port is not None:
                self._listen(bind_tcp(endpoints.tcp_host, endpoints.tcp_port), self._data)
                self._listen(bind_tcp(endpoints.tcp_host, endpoints.tcp_port + 1), self._ctrl)
        except BaseException:
            self.close()
            raise

    def _listen(self, sock: socket.socket, factory: Callable[[socket.socket], Connection], path: str | None = None
                ) -> None:
        self.listeners.append(self.loop.listen(sock, factory, path))

    def _track(self, conn: Connection) -> Connection:
        self.connections.add(conn)
        conn.on_close = self.connections.discard
        return conn

    def _data(self, sock: socket.socket) -> Connection:
        return self._track(DataConnection(self.loop, sock, self.device))

    def _ctrl(self, sock: socket.socket) -> Connection:
        return self._track(ControlConnection(self.loop, sock, self.device, on_data_fd=self.adopt_data_socket,
                                             on_terminate=self.on_terminate))

    def adopt_data_socket(self, sock: socket.socket) -> None:
        """CMD_SET_DATAFD: the passed descriptor becomes a data connection of this vTPM."""
        self.loop.add(self._data(sock))

    def drop_connections(self) -> None:
        """Close every connection of this vTPM; the listeners stay."""
        for conn in list(self.connections):
            conn.close()

    def close(self) -> None:
        """Close the listeners (removing their Unix paths) and every connection."""
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        self.drop_connections()


class SwtpmLoopServer:
    """A vTPM on swtpm's protocol served by one event-loop thread: drop-in for the threaded ``SwtpmServer``."""

    def __init__(self, device: TpmDevice, *, host: str = "127.0.0.1", port: int | None = None,
                 unix_path: str | None = None, ctrl_unix_path: str | None = None,
                 commit: CommitHook = no_commit) -> None:
        self.device = device
        self.terminated = threading.Event()
        self.loop = Loop(commit=commit)
        ctrl = ctrl_unix_path or (f"{unix_path}.ctrl" if unix_path is not None else None)
        try:
            self.endpoints = SwtpmEndpoints(self.loop, lambda: device,
                                            Endpoints(ctrl, unix_path, port, host), self._terminate)
        except BaseException:
            self.loop.close()
            raise
        self.thread: threading.Thread | None = None

    def _terminate(self) -> None:
        self.terminated.set()

    def start(self) -> "SwtpmLoopServer":
        """Run the loop in a daemon thread; returned for chaining."""
        self.thread = threading.Thread(target=self.loop.run, name="vtpm-loop", daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop the loop (waiting up to 10 s for its thread), then close the endpoints and the loop."""
        self.loop.stop()
        if self.thread is not None:
            self.thread.join(10.0)
        self.endpoints.close()
        self.loop.close()
