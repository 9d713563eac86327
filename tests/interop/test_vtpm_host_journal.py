"""`vtpm host` journals every vTPM and commits them as a group once per loop iteration.

Real sockets, real files and a real host process for the SIGKILL test; the
failure and stall tests run the host's loop in this process (a thread, or
iteration by iteration) so that they can reach one vTPM's journal.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from support.files import refuse_writes
from support.servers import start_vtpm_host
from vtpm import wire
from vtpm.client import TpmClient, TpmCommandError
from vtpm.constants import RC, RH, TPMA_NV
from vtpm.host import VtpmHost
from vtpm.host_protocol import HostClient, parse_add
from vtpm.state import TpmState
from vtpm.storage import PlainStateStore

NV_INDEX = 0x01500088
NV_ATTRS = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA


def _client(path: Path) -> TpmClient:
    return TpmClient.swtpm_unix(str(path), timeout=30.0)


def _nv_value(state_dir: Path) -> bytes:
    state = PlainStateStore(state_dir).load()
    assert state is not None
    with TpmClient(__import__("vtpm.engine", fromlist=["Tpm"]).Tpm(state)) as tpm:
        tpm.startup()
        return tpm.nv_read(NV_INDEX, 8)


def test_sigkill_after_acknowledged_writes_on_several_vtpms_keeps_them_all(tmp_path: Path) -> None:
    count = 4
    with start_vtpm_host(tmp_path / "run" / "host.sock", tmp_path / "host.log") as host:
        client = host.client()
        for n in range(count):
            client.add(f"v{n}", state=str(tmp_path / f"s{n}"), data_unix=str(tmp_path / f"v{n}.sock"))
        for n in range(count):
            with _client(tmp_path / f"v{n}.sock") as tpm:
                tpm.startup()
                tpm.nv_define(NV_INDEX, NV_ATTRS, 8, auth_handle=RH.OWNER)
                for value in range(1, 6):
                    tpm.nv_write(NV_INDEX, (n * 100 + value).to_bytes(8, "big"), auth_handle=RH.OWNER)
        journals = [tmp_path / f"s{n}" / "tpm2-state.journal" for n in range(count)]
        assert all(j.exists() for j in journals)  # journaled, not rewritten: the changes are records
        os.kill(host.pid, signal.SIGKILL)
        host.proc.wait(10)
    for n in range(count):  # opening folds the journal: every acknowledged write is there
        assert _nv_value(tmp_path / f"s{n}") == (n * 100 + 5).to_bytes(8, "big")


def _host_in_thread(tmp_path: Path, names: list[str]) -> tuple[VtpmHost, threading.Thread, HostClient]:
    for name in names:
        PlainStateStore(tmp_path / name).save(TpmState.manufacture().to_bytes())
    daemon = VtpmHost(str(tmp_path / "host.sock"), lambda request: PlainStateStore(request.state))
    daemon.bind()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    client = HostClient(tmp_path / "host.sock")
    for name in names:
        client.add(name, state=str(tmp_path / name), data_unix=str(tmp_path / f"{name}.sock"))
    return daemon, thread, client


def test_a_failed_commit_answers_nv_unavailable_and_never_persists_that_change(tmp_path: Path) -> None:
    daemon, thread, client = _host_in_thread(tmp_path, ["a", "b"])
    try:
        a, b = _client(tmp_path / "a.sock"), _client(tmp_path / "b.sock")
        for tpm in (a, b):
            tpm.startup()
            tpm.nv_define(NV_INDEX, NV_ATTRS, 8, auth_handle=RH.OWNER)
            tpm.nv_write(NV_INDEX, b"first..!", auth_handle=RH.OWNER)
        store = daemon.vtpms["a"].journaled
        assert store is not None and store._file is not None
        # the storage fails: the journal's descriptor now refuses writes (EBADF), as a dead disk would
        refuse_writes(store._file)
        with pytest.raises(TpmCommandError) as failed:
            a.nv_write(NV_INDEX, b"second!!", auth_handle=RH.OWNER)
        assert failed.value.rc == RC.NV_UNAVAILABLE
        b.nv_write(NV_INDEX, b"b-second", auth_handle=RH.OWNER)  # the neighbour is not affected
        assert b.nv_read(NV_INDEX, 8) == b"b-second"
        # a's in-memory state (holding "second!!") was dropped: it is loaded again from what was acknowledged
        assert _rc(a.transact(wire.get_random(4))) == RC.INITIALIZE
        a.startup()
        assert a.nv_read(NV_INDEX, 8) == b"first..!"
        a.nv_write(NV_INDEX, b"third!!!", auth_handle=RH.OWNER)  # a fresh journal: writes work again
        a.close()
        b.close()
        client.remove("a")
        assert _nv_value(tmp_path / "a") == b"third!!!"
    finally:
        daemon.stop()
        thread.join(10)
        daemon.close()
    assert _nv_value(tmp_path / "b") == b"b-second"


def test_failed_commit_with_an_unerasable_journal_keeps_the_vtpm_out_of_service(tmp_path: Path) -> None:
    daemon, thread, client = _host_in_thread(tmp_path, ["a"])
    try:
        with _client(tmp_path / "a.sock") as a:
            a.startup()
            a.nv_define(NV_INDEX, NV_ATTRS, 8, auth_handle=RH.OWNER)
            a.nv_write(NV_INDEX, b"first..!", auth_handle=RH.OWNER)
            store = daemon.vtpms["a"].journaled
            assert store is not None and store._file is not None
            base_before = (tmp_path / "a" / "tpm2-state.json").read_bytes()
            # the record is written but the sync fails and the erase cannot write: read-only after the write
            original_sync = store.sync

            def failing_sync() -> None:
                assert store._file is not None
                refuse_writes(store._file, every=True)
                raise OSError(5, "Input/output error")

            store.sync = failing_sync  # type: ignore[method-assign]
            with pytest.raises(TpmCommandError) as failed:
                a.nv_write(NV_INDEX, b"second!!", auth_handle=RH.OWNER)
            assert failed.value.rc == RC.NV_UNAVAILABLE
            store.sync = original_sync  # type: ignore[method-assign]
            assert _rc(a.transact(wire.get_random(4))) == RC.FAILURE  # out of service: nothing loaded
        client.remove("a")
        assert client.list() == []
    finally:
        daemon.stop()
        thread.join(10)
        daemon.close()
    # the host never folded the dropped state: the base is as it was and the journal is left for the
    # next open to verify (the unsynced record may or may not be on the failed disk)
    assert (tmp_path / "a" / "tpm2-state.journal").exists()
    assert (tmp_path / "a" / "tpm2-state.json").read_bytes() == base_before


def _rc(response: bytes) -> int:
    return int.from_bytes(response[6:10], "big")


class _Pumped:
    """A transport that sends a command and runs the host's loop (in this thread) until it is answered."""

    def __init__(self, daemon: VtpmHost, path: Path) -> None:
        self.daemon = daemon
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))

    def send(self, command: bytes) -> None:
        self.sock.sendall(command)

    def receive(self) -> bytes:
        data = b""
        while len(data) < 10 or len(data) < int.from_bytes(data[2:6], "big"):
            if not select.select([self.sock], [], [], 0)[0]:
                self.daemon.loop.run_once(0.2)
                continue
            chunk = self.sock.recv(65536)
            assert chunk, "the host closed the connection"
            data += chunk
        return data

    def transact(self, command: bytes) -> bytes:
        self.send(command)
        return self.receive()

    def close(self) -> None:
        self.sock.close()


def test_a_neighbours_read_is_answered_before_a_writers_fdatasync(tmp_path: Path) -> None:
    for name in ("a", "b"):
        PlainStateStore(tmp_path / name).save(TpmState.manufacture().to_bytes())
    daemon = VtpmHost(str(tmp_path / "host.sock"), lambda request: PlainStateStore(request.state))
    try:
        for name in ("a", "b"):
            daemon.add(parse_add({"op": "add", "name": name, "state": str(tmp_path / name),
                                  "data_unix": str(tmp_path / f"{name}.sock")}))
        a_transport, b_transport = _Pumped(daemon, tmp_path / "a.sock"), _Pumped(daemon, tmp_path / "b.sock")
        a, b = TpmClient(a_transport), TpmClient(b_transport)
        a.startup()
        b.startup()
        a.nv_define(NV_INDEX, NV_ATTRS, 8, auth_handle=RH.OWNER)
        store = daemon.vtpms["a"].journaled
        assert store is not None
        seen: dict[str, bool] = {}
        real_sync = store.sync

        def observed_sync() -> None:  # what the clients can read when a's fdatasync starts
            seen["b_answered"] = bool(select.select([b_transport.sock], [], [], 0)[0])
            seen["a_answered"] = bool(select.select([a_transport.sock], [], [], 0)[0])
            real_sync()

        store.sync = observed_sync  # type: ignore[method-assign]
        # capture a's NV_Write bytes, then send it together with b's read so one iteration runs both
        captured: list[bytes] = []

        class Capture:
            def transact(self, command: bytes) -> bytes:
                captured.append(command)
                raise _Captured

            def close(self) -> None:
                pass

        with pytest.raises(_Captured):
            TpmClient(Capture()).nv_write(NV_INDEX, b"written!", auth_handle=RH.OWNER)
        a_transport.send(captured[0])
        b_transport.send(wire.get_random(8))
        time.sleep(0.05)  # both commands are in the sockets before the loop looks
        daemon.loop.run_once(0.5)
        assert seen == {"b_answered": True, "a_answered": False}  # b's reply left before a's sync; a's after
        assert _rc(b_transport.receive()) == RC.SUCCESS
        assert _rc(a_transport.receive()) == RC.SUCCESS
        assert store.syncs >= 1 and a.nv_read(NV_INDEX, 8) == b"written!"
        a.close()
        b.close()
    finally:
        daemon.close()


class _Captured(Exception):
    pass
