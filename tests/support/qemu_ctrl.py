"""A control-channel client that behaves like QEMU's tpm-emulator backend (backends/tpm/tpm_emulator.c).

QEMU keeps one control connection open for the VM's life, sends each request
as one write of the whole request union (e.g. 4 bytes for CMD_SET_LOCALITY,
whose request field is 1 byte), reads exactly the answer size it expects, and
hands the data channel over with CMD_SET_DATAFD (one end of a socketpair, as
SCM_RIGHTS). Its live migration reads the state blobs on the control channel
(CMD_GET_STATEBLOB x3 on the running source) and writes them on the
destination after CMD_STOP (CMD_SET_STATEBLOB: header, then the blob, then the
4-byte result), then CMD_INIT with PTM_INIT_FLAG_DELETE_VOLATILE. The same
client drives swtpm and our `vtpm socket`.
"""

from __future__ import annotations

import array
import contextlib
import socket
from dataclasses import dataclass, field

from vtpm.server.protocol import Ctrl

INIT_FLAG_DELETE_VOLATILE = 1
STATE_FLAG_DECRYPTED = 1
BLOB_PERMANENT, BLOB_VOLATILE, BLOB_SAVESTATE = 1, 2, 3
LOCK_RETRIES = 300  # QEMU gives the other side 300 x 10 ms


class CtrlError(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise CtrlError(f"the control channel closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


@dataclass
class QemuControl:
    """One control connection, to a Unix path or a TCP (host, port)."""

    sock: socket.socket
    data: socket.socket | None = None
    sent: list[int] = field(default_factory=list)

    @classmethod
    def unix(cls, path: str, timeout: float = 10.0) -> "QemuControl":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls(sock)

    @classmethod
    def tcp(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> "QemuControl":
        return cls(socket.create_connection((host, port), timeout=timeout))

    def close(self) -> None:
        for sock in (self.data, self.sock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> "QemuControl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ctrlcmd(self, code: int, msg: bytes = b"", answer: int = 4) -> bytes:
        """tpm_emulator_ctrlcmd: code and request in one write, then exactly ``answer`` bytes."""
        self.sent.append(code)
        self.sock.sendall(_u32(code) + msg)
        return _recv_exact(self.sock, answer) if answer else b""

    def result(self, code: int, msg: bytes = b"") -> int:
        return int.from_bytes(self.ctrlcmd(code, msg), "big")

    # ------------------------------------------------------------------ start-up

    def set_data_fd(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sent.append(Ctrl.SET_DATAFD)
        self.sock.sendmsg([_u32(Ctrl.SET_DATAFD)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
        res = int.from_bytes(_recv_exact(self.sock, 4), "big")
        theirs.close()
        if res != 0:
            ours.close()
            raise CtrlError(f"CMD_SET_DATAFD: result {res}")
        ours.settimeout(self.sock.gettimeout())
        self.data = ours
        return ours

    def get_capability(self) -> int:
        """QEMU reads the answer as one big-endian 64-bit value (result in the high half)."""
        return int.from_bytes(self.ctrlcmd(Ctrl.GET_CAPABILITY, answer=8), "big")

    def stop(self) -> int:
        return self.result(Ctrl.STOP)

    def set_buffer_size(self, size: int) -> tuple[int, int, int, int]:
        answer = self.ctrlcmd(Ctrl.SET_BUFFERSIZE, _u32(size), answer=16)
        return tuple(int.from_bytes(answer[i : i + 4], "big") for i in range(0, 16, 4))  # type: ignore[return-value]

    def init(self, flags: int = 0) -> int:
        return self.result(Ctrl.INIT, _u32(flags))

    def get_tpm_established(self) -> tuple[int, int]:
        answer = self.ctrlcmd(Ctrl.GET_TPMESTABLISHED, answer=8)
        return int.from_bytes(answer[:4], "big"), answer[4]

    def set_locality(self, locality: int) -> int:
        return self.result(Ctrl.SET_LOCALITY, bytes([locality]) + bytes(3))  # the whole 4-byte union

    def shutdown(self) -> int:
        return self.result(Ctrl.SHUTDOWN)

    def lock_storage(self, retries: int = LOCK_RETRIES) -> int:
        return self.result(Ctrl.LOCK_STORAGE, _u32(retries))

    def startup_sequence(self, buffer_size: int = 3968) -> None:
        """What QEMU 7.2 does before the guest runs, with the data channel over SET_DATAFD (Unix only)."""
        self.set_data_fd()
        caps = self.get_capability()
        if caps >> 32:
            raise CtrlError(f"CMD_GET_CAPABILITY: result {caps >> 32}")
        self.expect_ok("CMD_STOP", self.stop())
        res, *_ = self.set_buffer_size(0)
        self.expect_ok("CMD_SET_BUFFERSIZE(0)", res)
        self.expect_ok("CMD_STOP", self.stop())
        res, *_ = self.set_buffer_size(buffer_size)
        self.expect_ok("CMD_SET_BUFFERSIZE", res)
        self.expect_ok("CMD_INIT", self.init())
        res, _ = self.get_tpm_established()
        self.expect_ok("CMD_GET_TPMESTABLISHED", res)
        self.expect_ok("CMD_SET_LOCALITY", self.set_locality(0))

    @staticmethod
    def expect_ok(what: str, res: int) -> None:
        if res != 0:
            raise CtrlError(f"{what}: result 0x{res:x}")

    # ------------------------------------------------------------------ data channel

    def transact(self, command: bytes) -> bytes:
        assert self.data is not None, "no data channel: call set_data_fd() first"
        self.data.sendall(command)
        header = _recv_exact(self.data, 10)
        return header + _recv_exact(self.data, int.from_bytes(header[2:6], "big") - 10)

    # ------------------------------------------------------------------ migration

    def get_state_blob(self, kind: int) -> tuple[int, bytes]:
        """tpm_emulator_get_state_blob: (state flags, blob); CtrlError if the TPM refused."""
        answer = self.ctrlcmd(Ctrl.GET_STATEBLOB, _u32(STATE_FLAG_DECRYPTED) + _u32(kind) + _u32(0), answer=16)
        res, flags, total, length = (int.from_bytes(answer[i : i + 4], "big") for i in range(0, 16, 4))
        if res != 0 and not res & 0x800:
            raise CtrlError(f"CMD_GET_STATEBLOB({kind}): result 0x{res:x}")
        if total != length:
            raise CtrlError(f"CMD_GET_STATEBLOB({kind}): totlength {total} != length {length}")
        return flags, _recv_exact(self.sock, total) if total else b""

    def set_state_blob(self, kind: int, blob: bytes, flags: int = 0) -> int:
        """tpm_emulator_set_state_blob: the header alone, the blob, then the result. Empty blobs are not sent."""
        if not blob:
            return 0
        self.ctrlcmd(Ctrl.SET_STATEBLOB, _u32(flags) + _u32(kind) + _u32(len(blob)), answer=0)
        self.sock.sendall(blob)
        return int.from_bytes(_recv_exact(self.sock, 4), "big")

    def get_state_blobs(self) -> dict[int, tuple[int, bytes]]:
        """QEMU's pre_save on the (paused, still running) source."""
        return {kind: self.get_state_blob(kind) for kind in (BLOB_PERMANENT, BLOB_VOLATILE, BLOB_SAVESTATE)}

    def set_state_blobs(self, blobs: dict[int, tuple[int, bytes]]) -> None:
        """QEMU's post_load on the destination: stop, the three blobs, init resuming the volatile state."""
        self.expect_ok("CMD_STOP", self.stop())
        for kind in (BLOB_PERMANENT, BLOB_VOLATILE, BLOB_SAVESTATE):
            flags, blob = blobs[kind]
            self.expect_ok(f"CMD_SET_STATEBLOB({kind})", self.set_state_blob(kind, blob, flags))
        self.expect_ok("CMD_INIT", self.init(INIT_FLAG_DELETE_VOLATILE))
