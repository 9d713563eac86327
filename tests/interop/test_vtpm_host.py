"""`vtpm host`: many vTPMs in one process on one event loop, driven over its control socket.

Real processes and sockets throughout; the lazy-load test runs the host in a
thread of this process so that it can count what its (real, plain) store reads.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.servers import start_vtpm_host
from vtpm import wire
from vtpm.client import TpmClient
from vtpm.constants import ALG, RC, RH, TPMA_NV
from vtpm.host import VtpmHost
from vtpm.host_protocol import HostClient, HostError
from vtpm.server.protocol import TPM_FAIL, Ctrl
from vtpm.server.sockets import free_port_pair
from vtpm.state import TpmState
from vtpm.storage import PlainStateStore

NV_INDEX = 0x01500077
NV_ATTRS = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA


@pytest.fixture
def host(tmp_path: Path):
    with start_vtpm_host(tmp_path / "run" / "host.sock", tmp_path / "host.log") as server:
        yield server


def _rc(response: bytes) -> int:
    return int.from_bytes(response[6:10], "big")


def _unix_client(path: Path, timeout: float = 10.0) -> TpmClient:
    return TpmClient.swtpm_unix(str(path), timeout=timeout)


def test_add_list_remove_over_the_control_socket(host, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(host.socket_path).st_mode) == 0o600
    client = host.client()
    port = free_port_pair()
    a = client.add("a", state=str(tmp_path / "a"), data_unix=str(tmp_path / "a.sock"))
    b = client.add("b", state=str(tmp_path / "b"), tcp_port=port)
    assert a["ctrl_unix"] == str(tmp_path / "a.sock.ctrl") and b["tcp_port"] == port
    assert stat.S_IMODE(os.stat(tmp_path / "a.sock.ctrl").st_mode) == 0o600
    assert [v["name"] for v in client.list()] == ["a", "b"]
    with _unix_client(tmp_path / "a.sock") as tpm:
        tpm.startup()
        tpm.pcr_extend(16, {ALG.SHA256: b"\x11" * 32})
    with TpmClient.swtpm_tcp(port) as tpm:
        tpm.startup()
        assert len(tpm.get_random(8)) == 8
    listed = {v["name"]: v for v in client.list()}
    assert listed["a"]["loaded"] and listed["b"]["loaded"]
    client.remove("a")
    assert [v["name"] for v in client.list()] == ["b"]
    assert not (tmp_path / "a.sock").exists() and not (tmp_path / "a.sock.ctrl").exists()
    assert json.loads((tmp_path / "a" / "tpm2-state.json").read_bytes())  # saved at removal
    with pytest.raises(HostError, match="no vTPM named 'a'"):
        client.remove("a")
    with pytest.raises(HostError, match="already served by the vTPM 'b'"):
        client.add("b2", state=str(tmp_path / "b"), tcp_port=free_port_pair())
    with pytest.raises(HostError, match="Address already in use"):
        client.add("c", state=str(tmp_path / "c"), tcp_port=port)
    assert [v["name"] for v in client.list()] == ["b"]  # the refused ones left nothing behind


class CountingStore(PlainStateStore):
    """A plain state directory that counts its reads (the journaled store reads through ``load_raw``)."""

    loads = 0

    def load_raw(self):
        type(self).loads += 1
        return super().load_raw()


def test_state_is_loaded_at_the_first_command_and_evicted_when_idle(tmp_path: Path) -> None:
    PlainStateStore(tmp_path / "s").save(TpmState.manufacture().to_bytes())
    CountingStore.loads = 0
    daemon = VtpmHost(str(tmp_path / "host.sock"), lambda request: CountingStore(request.state), evict_after=0.2)
    daemon.bind()
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        client = HostClient(tmp_path / "host.sock")
        added = client.add("lazy", state=str(tmp_path / "s"), data_unix=str(tmp_path / "lazy.sock"))
        assert added["loaded"] is False and CountingStore.loads == 0  # add validated and opened; read nothing
        with _unix_client(tmp_path / "lazy.sock") as tpm:
            assert CountingStore.loads == 0  # a connection is not a command
            assert _rc(tpm.transact(wire.get_random(4))) == RC.INITIALIZE  # the first command loads it
            assert CountingStore.loads == 1
            assert client.list()[0]["loaded"] is True
            time.sleep(0.6)
            assert client.list()[0]["loaded"] is True  # a connection is open: kept
        deadline = time.monotonic() + 5
        while client.list()[0]["loaded"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.list()[0]["loaded"] is False  # idle, not started, no connection: dropped from memory
        with _unix_client(tmp_path / "lazy.sock") as tpm:
            tpm.startup()
        assert CountingStore.loads == 2 and client.list()[0]["loads"] == 2
        time.sleep(0.8)
        assert client.list()[0]["loaded"] is True  # a started TPM is never evicted (its PCRs would be lost)
    finally:
        daemon.stop()
        thread.join(10)
        daemon.close()


def _drive(path: Path, number: int) -> tuple[bytes, bytes]:
    """Startup, extend PCR 16 and write NV with this vTPM's own data; read both back."""
    digest = hashlib.sha256(b"vtpm %d" % number).digest()
    with _unix_client(path, timeout=60.0) as tpm:
        tpm.startup()
        tpm.pcr_extend(16, {ALG.SHA256: digest})
        tpm.nv_define(NV_INDEX, NV_ATTRS, 8, auth_handle=RH.OWNER)
        tpm.nv_write(NV_INDEX, number.to_bytes(8, "big"), auth_handle=RH.OWNER)
        return tpm.pcr_read({ALG.SHA256: [16]})[ALG.SHA256][16], tpm.nv_read(NV_INDEX, 8)


def test_fifty_vtpms_driven_concurrently_keep_their_own_state(host, tmp_path: Path) -> None:
    client = host.client()
    count = 50
    for n in range(count):
        client.add(f"vm{n}", state=str(tmp_path / f"s{n}"), data_unix=str(tmp_path / f"d{n}.sock"))
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: _drive(tmp_path / f"d{n}.sock", n), range(count)))
    for n, (pcr, nv) in enumerate(results):
        expected = hashlib.sha256(bytes(32) + hashlib.sha256(b"vtpm %d" % n).digest()).digest()
        assert pcr == expected and nv == n.to_bytes(8, "big")
    assert len({pcr for pcr, _ in results}) == count
    assert all(v["loaded"] for v in client.list())


def test_a_stalled_or_hostile_client_does_not_block_another_vtpm(host, tmp_path: Path) -> None:
    client = host.client()
    for name in ("victim", "other"):
        client.add(name, state=str(tmp_path / name), data_unix=str(tmp_path / f"{name}.sock"))
    stalled = socket.socket(socket.AF_UNIX)
    stalled.connect(str(tmp_path / "victim.sock"))
    stalled.sendall(wire.get_random(8)[:7])  # half a command, then silence
    oversize = socket.socket(socket.AF_UNIX)
    oversize.connect(str(tmp_path / "victim.sock"))
    oversize.sendall(b"\x80\x01" + (10**6).to_bytes(4, "big") + b"\x00\x00\x01\x7b")
    garbage = socket.socket(socket.AF_UNIX)
    garbage.connect(str(tmp_path / "other.sock"))
    garbage.sendall(b"\xff" * 5)
    garbage.close()  # disconnect mid-command
    with _unix_client(tmp_path / "other.sock", timeout=2.0) as tpm:  # a blocked loop would time out here
        tpm.startup()
        for _ in range(50):
            assert len(tpm.get_random(16)) == 16
    oversize.settimeout(5)
    answer = oversize.recv(64)
    assert _rc(answer) == RC.COMMAND_SIZE and oversize.recv(64) == b""  # answered, then dropped
    with _unix_client(tmp_path / "victim.sock", timeout=2.0) as tpm:  # the vTPM itself is unharmed
        tpm.startup()
        assert len(tpm.get_random(4)) == 4
    stalled.close()
    oversize.close()


def test_hostile_control_input_gets_an_error_and_harms_nobody(host, tmp_path: Path) -> None:
    client = host.client()
    client.add("good", state=str(tmp_path / "good"), data_unix=str(tmp_path / "good.sock"))
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(host.socket_path))
    silent.sendall(b'{"op": "li')  # half a request, then nothing
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(host.socket_path))
    raw.settimeout(10)
    reader = raw.makefile("rb")
    for line, why in [
        (b"\xff\xfe\n", "not a JSON object"),
        (b"[1, 2]\n", "JSON object with an"),
        (b'{"op": 7}\n', "JSON object with an"),
        (b'{"op": "format-disk"}\n', "unknown op"),
        (b'{"op": "add", "name": "x", "state": "relative", "tcp_port": 5}\n', "absolute path"),
        (b'{"op": "add", "name": "x", "state": "/tmp/x", "vm": "/tmp/x.vmx", "tcp_port": 5}\n', "exactly one"),
        (b'{"op": "add", "name": "x", "state": "/tmp/x"}\n', "needs an endpoint"),
        (b'{"op": "add", "name": "x", "state": "/tmp/x", "tcp_port": 70000}\n', "tcp_port"),
        (b'{"op": "add", "name": "x\\n", "state": "/tmp/x", "tcp_port": 5000}\n', "printable"),
        (b'{"op": "add", "name": "x", "state": "/tmp/x", "tcp_port": 5000, "pickle": 1}\n', "unknown field"),
        (b'{"op": "add", "name": "x", "state": "/tmp/x", "ctrl_unix": "' + str(host.socket_path).encode() + b'"}\n',
         "already listens"),
        (b'{"op": "remove"}\n', "needs a"),
    ]:
        raw.sendall(line)
        answer = json.loads(reader.readline())
        assert answer["ok"] is False and why in answer["error"], (line, answer)
    raw.sendall(b"x" * (70 * 1024))  # longer than any request, no newline
    answer = json.loads(reader.readline())
    assert answer["ok"] is False and "longer than" in answer["error"]
    assert reader.readline() == b""  # and the connection is dropped
    assert [v["name"] for v in client.list()] == ["good"]
    assert client.ping()["vtpms"] == 1
    with _unix_client(tmp_path / "good.sock", timeout=2.0) as tpm:
        tpm.startup()
    silent.close()


def test_a_restarted_host_serves_the_saved_state(tmp_path: Path) -> None:
    sock, state = tmp_path / "host.sock", tmp_path / "state"
    with start_vtpm_host(sock, tmp_path / "host1.log") as first:
        first.client().add("vm", state=str(state), data_unix=str(tmp_path / "d.sock"))
        with _unix_client(tmp_path / "d.sock") as tpm:
            tpm.startup()
            tpm.nv_define(NV_INDEX, NV_ATTRS, 5, auth_handle=RH.OWNER)
            tpm.nv_write(NV_INDEX, b"kept!", auth_handle=RH.OWNER)
        assert first.stop() == 0
    assert "every vTPM saved" in first.log_text()
    with start_vtpm_host(sock, tmp_path / "host2.log") as second:
        second.client().add("vm", state=str(state), data_unix=str(tmp_path / "d.sock"))
        with _unix_client(tmp_path / "d.sock") as tpm:
            tpm.startup()
            assert tpm.nv_read(NV_INDEX, 5) == b"kept!"


def test_a_second_host_on_the_same_socket_is_refused(host, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vmcrypt.vtpm_command", "host", "--socket",
                             str(host.socket_path)], capture_output=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert result.returncode == 1 and b"another vtpm host serves" in result.stderr
    assert host.client().ping()["pid"] == host.pid


def _ctrl(sock: socket.socket, code: int, payload: bytes = b"", answer: int = 4, fds: list[int] | None = None) -> bytes:
    data = code.to_bytes(4, "big") + payload
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)
    out = b""
    while len(out) < answer:
        chunk = sock.recv(answer - len(out))
        assert chunk
        out += chunk
    return out


def test_qemu_style_control_socket_with_a_passed_data_fd(host, tmp_path: Path) -> None:
    """What QEMU does: only the control socket, the data channel handed over with CMD_SET_DATAFD."""
    host.client().add("qemu", state=str(tmp_path / "q"), ctrl_unix=str(tmp_path / "q.ctrl"))
    ctrl = socket.socket(socket.AF_UNIX)
    ctrl.settimeout(10)
    ctrl.connect(str(tmp_path / "q.ctrl"))
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    assert _ctrl(ctrl, Ctrl.SET_DATAFD, fds=[theirs.fileno()]) == bytes(4)
    theirs.close()
    caps = int.from_bytes(_ctrl(ctrl, Ctrl.GET_CAPABILITY, answer=8)[4:], "big")
    assert caps & (1 << 12)  # SET_DATAFD on a Unix control socket
    assert _ctrl(ctrl, Ctrl.INIT, bytes(4)) == bytes(4)
    ours.sendall(wire.STARTUP_CLEAR)
    assert _rc(ours.recv(64)) == 0
    ours.sendall(wire.get_random(8))
    assert _rc(ours.recv(64)) == 0
    assert _ctrl(ctrl, Ctrl.SET_DATAFD) == (3).to_bytes(4, "big")  # no descriptor passed: TPM_BAD_PARAMETER
    assert _ctrl(ctrl, Ctrl.SHUTDOWN) == bytes(4)  # the vTPM stops, its connections end, it stays hosted
    assert ours.recv(64) == b""
    assert [v["name"] for v in host.client().list()] == ["qemu"]
    ctrl.close()


def test_tpm2_tools_against_a_hosted_vtpm(host, tmp_path: Path) -> None:
    port = free_port_pair()
    host.client().add("tools", state=str(tmp_path / "t"), tcp_port=port)
    env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={port}"}

    def tool(*args: str) -> str:
        return subprocess.run(args, env=env, check=True, capture_output=True, timeout=60, text=True).stdout

    tool("tpm2_startup", "-c")
    assert len(tool("tpm2_getrandom", "--hex", "8").strip()) == 16
    tool("tpm2_pcrextend", "16:sha256=" + "ab" * 32)
    expected = hashlib.sha256(bytes(32) + b"\xab" * 32).hexdigest().upper()
    assert expected in tool("tpm2_pcrread", "sha256:16").upper()


def test_exit_when_empty_after_the_last_remove_or_a_refused_first_add(tmp_path: Path) -> None:
    with start_vtpm_host(tmp_path / "a.sock", tmp_path / "a.log", "--exit-when-empty") as refused:
        client = refused.client()
        assert client.ping()["vtpms"] == 0  # a ping or a list does not end it
        with pytest.raises(HostError, match="absolute path"):
            client.add("x", state="relative", tcp_port=free_port_pair())
        assert refused.proc.wait(20) == 0
    assert not (tmp_path / "a.sock").exists()
    with start_vtpm_host(tmp_path / "b.sock", tmp_path / "b.log", "--exit-when-empty") as host:
        client = host.client()
        client.add("one", state=str(tmp_path / "one"), ctrl_unix=str(tmp_path / "one.ctrl"))
        client.add("two", state=str(tmp_path / "two"), ctrl_unix=str(tmp_path / "two.ctrl"))
        client.remove("one")
        assert host.proc.poll() is None
        client.remove("two")
        assert host.proc.wait(20) == 0


def test_a_state_directory_is_locked_by_its_hosted_vtpm(host, tmp_path: Path) -> None:
    """One server per state directory, as `vtpm socket`: a second host is refused the directory until
    the first removes its vTPM; an incoming add (a migration target) waits for CMD_LOCK_STORAGE."""
    state = tmp_path / "shared"
    host.client().add("a", state=str(state), ctrl_unix=str(tmp_path / "a.ctrl"))
    with start_vtpm_host(tmp_path / "other.sock", tmp_path / "other.log") as other:
        with pytest.raises(HostError, match="in use by another server"):
            other.client().add("b", state=str(state), ctrl_unix=str(tmp_path / "b.ctrl"))
        other.client().add("b", state=str(state), ctrl_unix=str(tmp_path / "b.ctrl"), incoming=True)
        ctrl = socket.socket(socket.AF_UNIX)
        ctrl.settimeout(10)
        ctrl.connect(str(tmp_path / "b.ctrl"))
        with ctrl:
            assert _ctrl(ctrl, Ctrl.LOCK_STORAGE, (300).to_bytes(4, "big")) == TPM_FAIL.to_bytes(4, "big")
            host.client().remove("a")
            assert _ctrl(ctrl, Ctrl.LOCK_STORAGE, bytes(4)) == bytes(4)
            assert _ctrl(ctrl, Ctrl.SHUTDOWN) == bytes(4)
        assert ctrl.fileno() == -1
        (described,) = other.client().list()
        assert described["running"] is False
