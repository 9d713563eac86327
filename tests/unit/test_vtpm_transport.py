"""Transports over real sockets, served in-process on loopback: swtpm control channel (TCP and
Unix, with data-fd passing as QEMU does) and the mssim platform protocol.

Bad inputs tried: a control command with a short payload, an unknown control
command, SET_BUFFERSIZE while running, RESET_TPMESTABLISHED from locality 0,
SET_DATAFD without a descriptor, data after CMD_STOP.
"""

from __future__ import annotations

import array
import json
import socket
import struct
from pathlib import Path

import pytest

from vtpm.engine import Tpm
from vtpm.server.device import TpmDevice
from vtpm.server.sockets import MssimServer, SwtpmServer, free_port_pair

GET_RANDOM = bytes.fromhex("80010000000c0000017b0008")
STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")
READ_CLOCK = bytes.fromhex("80010000000a00000181")


def tpm_command(sock: socket.socket, command: bytes) -> bytes:
    sock.sendall(command)
    header = sock.recv(10, socket.MSG_WAITALL)
    size = int.from_bytes(header[2:6], "big")
    return header + (sock.recv(size - 10, socket.MSG_WAITALL) if size > 10 else b"")


def ctrl(sock: socket.socket, code: int, payload: bytes = b"", expect: int = 4) -> bytes:
    sock.sendall(code.to_bytes(4, "big") + payload)
    return sock.recv(expect, socket.MSG_WAITALL)


@pytest.fixture
def tcp_server():
    port = free_port_pair()
    device = TpmDevice(Tpm())
    server = SwtpmServer(device, port=port).start()
    yield device, port
    server.close()


def test_control_channel_over_tcp(tcp_server) -> None:
    device, port = tcp_server
    with socket.create_connection(("127.0.0.1", port + 1)) as c, socket.create_connection(("127.0.0.1", port)) as d:
        caps = ctrl(c, 0x01, expect=8)
        assert caps[:4] == bytes(4) and int.from_bytes(caps[4:], "big") & 0x1 and not int.from_bytes(caps[4:], "big") & (1 << 12)
        # QEMU's probe before init: any well-formed 10-byte error is fine
        assert len(tpm_command(d, READ_CLOCK)) == 10
        assert ctrl(c, 0x11, b"\x00\x00\x00\x00", expect=16)[:8] == bytes(4) + (4096).to_bytes(4, "big")
        assert ctrl(c, 0x11, (3968).to_bytes(4, "big")) == (10).to_bytes(4, "big")  # running: refused
        assert ctrl(c, 0x0E) == bytes(4)  # STOP
        assert tpm_command(d, GET_RANDOM)[6:10] == (0x101).to_bytes(4, "big")  # stopped: TPM_RC_FAILURE
        resp = ctrl(c, 0x11, (3968).to_bytes(4, "big"), expect=16)
        assert resp[:8] == bytes(4) + (3968).to_bytes(4, "big")
        assert ctrl(c, 0x02, b"\x00\x00\x00\x00") == bytes(4)  # INIT
        assert tpm_command(d, STARTUP_CLEAR)[6:10] == bytes(4)
        assert tpm_command(d, GET_RANDOM)[6:10] == bytes(4)
        assert ctrl(c, 0x04, expect=8) == bytes(8)  # not established
        assert ctrl(c, 0x0B, b"\x00") == (0x3D).to_bytes(4, "big")  # reset from locality 0: bad locality
        assert ctrl(c, 0x0B, b"\x03") == bytes(4)
        assert ctrl(c, 0x05, b"\x03") == bytes(4) and device.locality == 3
        assert ctrl(c, 0x05, b"\x09") == (0x3D).to_bytes(4, "big")
        assert ctrl(c, 0x09) == bytes(4)  # cancel
        assert ctrl(c, 0x0A) == bytes(4)  # store volatile
        assert ctrl(c, 0x0F, expect=8) == bytes(8)  # get config
        info = ctrl(c, 0x12, struct.pack(">QII", 3, 0, 0), expect=12)
        assert info[:4] == bytes(4)
        text = c.recv(int.from_bytes(info[8:12], "big"), socket.MSG_WAITALL)
        doc = json.loads(text.rstrip(b"\0"))
        assert doc["TPMSpecification"]["family"] == "2.0" and doc["TPMAttributes"]["manufacturer"] == "id:564D4352"
        assert ctrl(c, 0x10) == (9).to_bytes(4, "big")  # SET_DATAFD needs a Unix socket
        assert ctrl(c, 0x77) == (10).to_bytes(4, "big")  # unknown
    with socket.create_connection(("127.0.0.1", port + 1)) as c:
        c.sendall(b"\x00\x00\x00\x02\x00\x00")  # INIT with 2 of its 4 payload bytes, then silence
        assert c.recv(4) in (b"", )  # the server gives up on the half request and closes
    with socket.create_connection(("127.0.0.1", port)) as d:
        assert tpm_command(d, GET_RANDOM)[6:10] == bytes(4)


def test_unix_control_with_passed_data_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "vtpm.sock")
    device = TpmDevice(Tpm())
    server = SwtpmServer(device, unix_path=path).start()
    try:
        ours, theirs = socket.socketpair()
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path + ".ctrl")
            caps = ctrl(c, 0x01, expect=8)
            assert int.from_bytes(caps[4:], "big") & (1 << 12)  # SET_DATAFD offered on Unix
            assert ctrl(c, 0x10) == (3).to_bytes(4, "big")  # no descriptor passed: bad parameter
            fds = array.array("i", [theirs.fileno()])
            c.sendmsg([(0x10).to_bytes(4, "big")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            assert c.recv(4, socket.MSG_WAITALL) == bytes(4)
            theirs.close()
            assert ctrl(c, 0x02, b"\x00\x00\x00\x00") == bytes(4)
            assert tpm_command(ours, STARTUP_CLEAR)[6:10] == bytes(4)
            assert tpm_command(ours, GET_RANDOM)[6:10] == bytes(4)
        with socket.socket(socket.AF_UNIX) as d:
            d.connect(path)
            assert tpm_command(d, GET_RANDOM)[6:10] == bytes(4)
        ours.close()
    finally:
        server.close()


def test_mssim_platform_protocol() -> None:
    port = free_port_pair()
    device = TpmDevice(Tpm())
    server = MssimServer(device, port=port).start()

    def send(sock: socket.socket, command: bytes, locality: int = 0) -> bytes:
        sock.sendall((8).to_bytes(4, "big") + bytes([locality]) + len(command).to_bytes(4, "big") + command)
        size = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "big")
        response = sock.recv(size, socket.MSG_WAITALL)
        assert sock.recv(4, socket.MSG_WAITALL) == bytes(4)
        return response

    try:
        with socket.create_connection(("127.0.0.1", port)) as cmd, socket.create_connection(("127.0.0.1", port + 1)) as plat:
            for signal in (1, 11):  # POWER_ON, NV_ON as tpm2-tss sends them
                plat.sendall(signal.to_bytes(4, "big"))
                assert plat.recv(4, socket.MSG_WAITALL) == bytes(4)
            assert send(cmd, STARTUP_CLEAR)[6:10] == bytes(4)
            plat.sendall((1).to_bytes(4, "big"))  # power-on of a running TPM changes nothing
            plat.recv(4, socket.MSG_WAITALL)
            assert send(cmd, GET_RANDOM)[6:10] == bytes(4)
            plat.sendall((2).to_bytes(4, "big"))  # POWER_OFF
            plat.recv(4, socket.MSG_WAITALL)
            assert send(cmd, GET_RANDOM)[6:10] == (0x101).to_bytes(4, "big")
            plat.sendall((1).to_bytes(4, "big"))
            plat.recv(4, socket.MSG_WAITALL)
            assert send(cmd, GET_RANDOM)[6:10] == (0x100).to_bytes(4, "big")  # after power-on: needs Startup
            cmd.sendall((15).to_bytes(4, "big") + (1).to_bytes(4, "big"))  # REMOTE_HANDSHAKE
            reply = cmd.recv(12, socket.MSG_WAITALL)
            assert reply[:4] == (1).to_bytes(4, "big") and reply[8:] == bytes(4)
            cmd.sendall((20).to_bytes(4, "big"))  # SESSION_END
    finally:
        server.close()
