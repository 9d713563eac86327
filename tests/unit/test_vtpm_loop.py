"""The event loop in-process, over socket pairs: the commit seam, deadlines, oversize frames."""

from __future__ import annotations

import socket
import time

from vtpm import wire
from vtpm.constants import RC
from vtpm.engine import Tpm
from vtpm.server.device import TpmDevice
from vtpm.server.loop import DataConnection, Loop, Reply


def _device() -> TpmDevice:
    tpm = Tpm()
    tpm.execute(0, wire.STARTUP_CLEAR)
    return TpmDevice(tpm)


def _rc(frame: bytes) -> int:
    return int.from_bytes(frame[6:10], "big")


def test_the_commit_hook_sees_every_reply_of_an_iteration_before_any_is_sent() -> None:
    seen: list[list[Reply]] = []
    devices = [_device(), _device()]

    def commit(replies: list[Reply]) -> None:
        for client in clients:  # nothing has been sent yet
            client.setblocking(False)
            try:
                assert client.recv(64) == b""  # pragma: no cover (a response would be a failure)
            except BlockingIOError:
                pass
        seen.append(list(replies))
        replies[1].response = wire.error_response(RC.NV_UNAVAILABLE)  # a group commit that failed for one vTPM

    loop = Loop(commit=commit)
    clients = []
    for device in devices:
        ours, theirs = socket.socketpair()
        loop.add(DataConnection(loop, theirs, lambda device=device: device))
        clients.append(ours)
    for client in clients:
        client.sendall(wire.get_random(8))
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        loop.run_once(0.1)
    assert len(seen) == 1 and [r.device for r in seen[0]] == devices
    for client in clients:
        client.setblocking(True)
        client.settimeout(5)
    assert _rc(clients[0].recv(64)) == 0
    assert _rc(clients[1].recv(64)) == RC.NV_UNAVAILABLE
    loop.close()


def test_half_a_command_is_dropped_at_its_deadline_and_others_are_served() -> None:
    loop = Loop()
    device = _device()
    stalled, theirs = socket.socketpair()
    slow = DataConnection(loop, theirs, lambda: device)
    slow.timeout_when_partial = 0.05
    loop.add(slow)
    stalled.sendall(wire.get_random(8)[:5])
    good, theirs2 = socket.socketpair()
    loop.add(DataConnection(loop, theirs2, lambda: device))
    good.sendall(wire.get_random(8))
    good.settimeout(5)
    deadline = time.monotonic() + 5
    while not slow.closed and time.monotonic() < deadline:
        loop.run_once(0.02)
    assert slow.closed and loop.connection_count == 1
    assert _rc(good.recv(64)) == 0
    stalled.settimeout(5)
    assert stalled.recv(64) == b""
    loop.close()


def test_an_oversize_size_gets_command_size_and_the_connection_ends() -> None:
    loop = Loop()
    device = _device()
    client, theirs = socket.socketpair()
    loop.add(DataConnection(loop, theirs, lambda: device))
    client.sendall(b"\x80\x01" + (1 << 20).to_bytes(4, "big") + b"\x00\x00\x01\x7b")
    client.settimeout(5)
    for _ in range(10):
        loop.run_once(0.02)
    assert _rc(client.recv(64)) == RC.COMMAND_SIZE
    assert client.recv(64) == b"" and loop.connection_count == 0
    loop.close()
