"""swtpm's control channel protocol (include/swtpm/tpm_ioctl.h), without I/O.

A request is a big-endian UINT32 command code followed by a payload; every
answer starts with a UINT32 TPM 1.2-style result. Payloads are framed as swtpm
frames them: a request is what one read delivers, at least the command's
minimum size (``request_size``); a client such as QEMU sends the whole request
union (4 bytes for CMD_SET_LOCALITY, whose request is 1 byte), and the bytes
past the minimum belong to the same request. Commands without a request part
must come without payload. ``handle`` turns a complete request into the answer.

State blobs (CMD_GET_STATEBLOB / CMD_SET_STATEBLOB) travel on the control
channel in both directions, as with swtpm's socket interface: the answer to
GET is result, flags, totlength, length and then ``length`` blob bytes from
the requested offset; SET's header (flags, type, length) is followed by
``length`` bytes that may arrive in several reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from vtpm.commands.capability import FIRMWARE_VERSION, MANUFACTURER, SPEC_LEVEL, SPEC_REVISION
from vtpm.server.device import BUFFER_MAX, BUFFER_MIN, TpmDevice
from vtpm.server.protocol import (  # noqa: F401  (re-exported: the control protocol's names)
    Ctrl,
    CAP_CANCEL_TPM_CMD,
    CAP_GET_CONFIG,
    CAP_GET_INFO,
    CAP_GET_STATEBLOB,
    CAP_GET_TPMESTABLISHED,
    CAP_INIT,
    CAP_LOCK_STORAGE,
    CAP_RESET_TPMESTABLISHED,
    CAP_SET_BUFFERSIZE,
    CAP_SET_DATAFD,
    CAP_SET_LOCALITY,
    CAP_SET_STATEBLOB,
    CAP_SHUTDOWN,
    CAP_STOP,
    CAP_STORE_VOLATILE,
    INFO_MAX_CHUNK,
    INFO_TPMATTRIBUTES,
    INFO_TPMSPECIFICATION,
    STATE_FLAG_ENCRYPTED,
    TPM_BAD_LOCALITY,
    TPM_BAD_ORDINAL,
    TPM_BAD_PARAMETER,
    TPM_FAIL,
    TPM_IOERROR,
    TPM_SUCCESS,
)
from vtpm.server.state_blobs import MAX_BLOB, BlobError, BlobType

log = logging.getLogger(__name__)

#: the fixed request part after the command code: (minimum bytes, True when more bytes are refused)
REQUESTS: dict[int, tuple[int, bool]] = {
    Ctrl.GET_CAPABILITY: (0, False),
    Ctrl.INIT: (4, True),
    Ctrl.SHUTDOWN: (0, True),
    Ctrl.GET_TPMESTABLISHED: (0, True),
    Ctrl.SET_LOCALITY: (1, False),
    Ctrl.HASH_START: (0, True),
    Ctrl.HASH_DATA: (4, False),
    Ctrl.HASH_END: (0, True),
    Ctrl.CANCEL_TPM_CMD: (0, True),
    Ctrl.STORE_VOLATILE: (0, True),
    Ctrl.RESET_TPMESTABLISHED: (1, False),
    Ctrl.GET_STATEBLOB: (12, False),
    Ctrl.SET_STATEBLOB: (12, False),
    Ctrl.STOP: (0, True),
    Ctrl.GET_CONFIG: (0, True),
    Ctrl.SET_DATAFD: (0, False),
    Ctrl.SET_BUFFERSIZE: (4, False),
    Ctrl.GET_INFO: (16, False),
    Ctrl.LOCK_STORAGE: (4, False),
}
HASH_DATA_MAX = 4096
GET_STATEBLOB_HEADER = 16  # result, state_flags, totlength, length


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def _be(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "big")


def request_size(message: bytes) -> int:
    """Total bytes (code included) the request starting with ``message`` needs; 4 until the code is known.

    For CMD_SET_STATEBLOB and CMD_HASH_DATA the size includes the data their
    header announces (capped, so a lying header cannot make us wait forever
    for more than the command may carry: ``handle`` refuses it instead).
    """
    if len(message) < 4:
        return 4
    code = _be(message, 0)
    minimum = REQUESTS.get(code, (0, False))[0]
    if code == Ctrl.SET_STATEBLOB and len(message) >= 16:
        length = _be(message, 12)
        return 16 + (length if length <= MAX_BLOB else 0)
    if code == Ctrl.HASH_DATA and len(message) >= 8:
        return 8 + min(_be(message, 4), HASH_DATA_MAX)
    return 4 + minimum


CTRL_READ = 4 + 4096 + 8  # one read of a control request, as swtpm's request buffer
CTRL_REQUEST_TIMEOUT = 0.5  # swtpm allows 500 ms for the rest of a control request
CTRL_BLOB_TIMEOUT = 10.0  # seconds between the reads of a state blob's remaining bytes


class RequestReader:
    """swtpm's framing of control requests, without I/O: feed it what each read delivers, take requests.

    A request starts with one read of at most ``CTRL_READ`` bytes; if that is
    shorter than ``request_size``, only the missing bytes are taken from what
    follows. Bytes past a complete request start the next one, as the next
    read would. The threaded server reads exactly ``missing`` bytes after the
    first read; the event loop feeds whatever arrived: both frame alike.
    """

    def __init__(self) -> None:
        self.message = bytearray()  # the request being completed
        self.pending = bytearray()  # bytes that arrived after it: the next read(s)

    def feed(self, data: bytes) -> None:
        """Add what one read delivered; ``next_request`` frames it."""
        self.pending += data

    @property
    def partial(self) -> bool:
        """Bytes of an unfinished request are held (the request deadline runs)."""
        return bool(self.message or self.pending)

    @property
    def missing(self) -> int:
        """Bytes the current request still needs (0 when there is none or it is complete)."""
        return max(0, request_size(self.message) - len(self.message)) if self.message else 0

    @property
    def in_blob_data(self) -> bool:
        """The current request is CMD_SET_STATEBLOB past its header: the blob may take longer to arrive."""
        return len(self.message) >= 16 and _be(self.message, 0) == Ctrl.SET_STATEBLOB

    def next_request(self) -> bytes | None:
        """The next complete request (code and payload), or None until more bytes arrive."""
        if not self.message:
            if not self.pending:
                return None
            self.message += self.pending[:CTRL_READ]
            del self.pending[:CTRL_READ]
        while self.pending and (missing := self.missing):
            self.message += self.pending[:missing]
            del self.pending[:missing]
        if len(self.message) < request_size(self.message):
            return None
        request = bytes(self.message)
        self.message.clear()
        return request

    def clear(self) -> None:
        """Forget the partial request and everything buffered after it (the connection is closing)."""
        self.message.clear()
        self.pending.clear()


@dataclass
class CtrlResult:
    """A control request's answer and what the transport must do after sending it."""

    response: bytes
    terminate: bool = False  # CMD_SHUTDOWN (or a lost lock): the serving process should end
    accept_data_fd: bool = False  # CMD_SET_DATAFD: the transport must take the passed descriptor
    close: bool = False  # the request stream is out of step: close the control connection after answering


def take_data_fd(result: CtrlResult, fds: list[int], adopt: Callable[[socket.socket], None]) -> CtrlResult:
    """CMD_SET_DATAFD's transport half: the first descriptor passed with the request becomes the data
    channel (removed from ``fds``); none passed is TPM_BAD_PARAMETER, one that is no socket TPM_FAIL."""
    if not result.accept_data_fd:
        return result
    if not fds:
        return CtrlResult(_u32(TPM_BAD_PARAMETER))
    fd = fds.pop(0)
    try:
        adopt(socket.socket(fileno=fd))
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        return CtrlResult(_u32(TPM_FAIL))
    return result


def close_fds(fds: list[int]) -> None:
    """Close the descriptors a request passed and nobody took."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def capabilities(unix: bool) -> int:
    """The control commands this server implements (CMD_GET_CAPABILITY); SET_DATAFD needs a Unix socket."""
    caps = (
        CAP_INIT | CAP_SHUTDOWN | CAP_GET_TPMESTABLISHED | CAP_SET_LOCALITY | CAP_CANCEL_TPM_CMD
        | CAP_STORE_VOLATILE | CAP_RESET_TPMESTABLISHED | CAP_GET_STATEBLOB | CAP_SET_STATEBLOB | CAP_STOP
        | CAP_GET_CONFIG | CAP_SET_BUFFERSIZE | CAP_GET_INFO | CAP_LOCK_STORAGE
    )
    return caps | (CAP_SET_DATAFD if unix else 0)


def info_json(flags: int) -> str:
    """CMD_GET_INFO's JSON for the ``flags`` asked (TPM specification level, manufacturer and version), as
    swtpm_setup reads it when it writes the EK certificate."""
    doc: dict[str, object] = {}
    if flags & INFO_TPMSPECIFICATION:
        doc["TPMSpecification"] = {"family": "2.0", "level": SPEC_LEVEL, "revision": SPEC_REVISION}
    if flags & INFO_TPMATTRIBUTES:
        doc["TPMAttributes"] = {
            "manufacturer": f"id:{MANUFACTURER.hex().upper()}",
            "version": f"id:{FIRMWARE_VERSION[0]:08X}",
            "model": "vmcrypt-vtpm",
        }
    return json.dumps(doc, separators=(",", ":"))


def _get_state_blob(device: TpmDevice, payload: bytes) -> CtrlResult:
    kind, offset = _be(payload, 4), _be(payload, 8)
    result, blob = TPM_SUCCESS, b""
    if kind not in BlobType._value2member_map_:
        result = TPM_FAIL
    else:
        try:
            blob = device.get_state_blob(BlobType(kind))
        except Exception:  # e.g. the store failed to save: QEMU gets an error, the TPM keeps running
            log.exception("reading the state blob failed")
            result = TPM_FAIL
    rest = blob[offset:] if result == TPM_SUCCESS else b""
    # swtpm's layout: totlength and length both count the bytes from the offset, all sent at once
    return CtrlResult(_u32(result) + _u32(0) + _u32(len(rest)) + _u32(len(rest)) + rest)


def _set_state_blob(device: TpmDevice, payload: bytes) -> CtrlResult:
    flags, kind, length = _be(payload, 0), _be(payload, 4), _be(payload, 8)
    if length > MAX_BLOB:
        log.error("refused a state blob of %d bytes", length)
        return CtrlResult(_u32(TPM_FAIL), close=True)
    data = payload[12:]
    if len(data) != length:
        return CtrlResult(_u32(TPM_BAD_PARAMETER), close=True)
    if device.running:
        return CtrlResult(_u32(TPM_BAD_ORDINAL))
    if device.storage is not None and not device.storage.ensure_locked():
        return CtrlResult(_u32(TPM_IOERROR), terminate=True)
    if flags & STATE_FLAG_ENCRYPTED:
        log.error("refused an encrypted state blob: no migration key is configured")
        return CtrlResult(_u32(TPM_FAIL))
    if kind not in BlobType._value2member_map_:
        return CtrlResult(_u32(TPM_BAD_PARAMETER))
    try:
        device.set_state_blob(BlobType(kind), data)
    except BlobError as exc:
        log.error("refused a %s state blob: %s", BlobType(kind).name.lower(), exc)
        return CtrlResult(_u32(TPM_BAD_PARAMETER))
    return CtrlResult(_u32(TPM_SUCCESS))


def handle(device: TpmDevice, code: int, payload: bytes, *, unix: bool = False) -> CtrlResult:
    """Execute one control command against ``device``; ``payload`` is the request after the code."""
    minimum, exact = REQUESTS.get(code, (0, False))
    if len(payload) < minimum or (exact and len(payload) != minimum):
        return CtrlResult(_u32(TPM_BAD_PARAMETER))
    if code == Ctrl.GET_CAPABILITY:
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(capabilities(unix)))
    if code == Ctrl.INIT:
        try:
            device.init(delete_volatile=bool(_be(payload, 0) & 1))
        except BlobError as exc:
            log.error("the migrated volatile state does not fit the permanent state: %s", exc)
            return CtrlResult(_u32(TPM_FAIL))
        return CtrlResult(_u32(TPM_SUCCESS))
    if code == Ctrl.STOP:
        device.stop()
        return CtrlResult(_u32(TPM_SUCCESS))
    if code == Ctrl.SHUTDOWN:
        device.stop()
        return CtrlResult(_u32(TPM_SUCCESS), terminate=True)
    if code == Ctrl.SET_LOCALITY:
        if payload[0] > 4:
            return CtrlResult(_u32(TPM_BAD_LOCALITY))
        device.locality = payload[0]
        return CtrlResult(_u32(TPM_SUCCESS))
    if code == Ctrl.SET_BUFFERSIZE:
        requested = _be(payload, 0)
        if requested and device.running:
            return CtrlResult(_u32(TPM_BAD_ORDINAL))
        size = device.set_buffer_size(requested)
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(size) + _u32(BUFFER_MIN) + _u32(BUFFER_MAX))
    if code == Ctrl.GET_CONFIG:
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(0))
    if code == Ctrl.GET_INFO:
        flags = int.from_bytes(payload[:8], "big")
        offset = _be(payload, 8)
        text = info_json(flags).encode() + b"\0"
        if offset >= len(text) - 1:
            return CtrlResult(_u32(TPM_BAD_PARAMETER))
        chunk = text[offset : offset + INFO_MAX_CHUNK]
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(len(text)) + _u32(len(chunk)) + chunk)
    if code == Ctrl.SET_DATAFD:
        if not unix:
            return CtrlResult(_u32(TPM_FAIL))
        return CtrlResult(_u32(TPM_SUCCESS), accept_data_fd=True)
    if code == Ctrl.LOCK_STORAGE:
        ok = device.lock_storage(_be(payload, 0))
        return CtrlResult(_u32(TPM_SUCCESS if ok else TPM_FAIL))
    if code == Ctrl.SET_STATEBLOB:
        return _set_state_blob(device, payload)
    # The rest need a running TPM.
    if not device.running:
        return CtrlResult(_u32(TPM_BAD_ORDINAL))
    if code == Ctrl.GET_STATEBLOB:
        return _get_state_blob(device, payload)
    if code == Ctrl.GET_TPMESTABLISHED:
        return CtrlResult(_u32(TPM_SUCCESS) + bytes([int(device.established)]) + b"\0\0\0")
    if code == Ctrl.RESET_TPMESTABLISHED:
        if payload[0] > 4:
            return CtrlResult(_u32(TPM_BAD_LOCALITY))
        if payload[0] < 3:
            return CtrlResult(_u32(TPM_BAD_LOCALITY))
        device.established = False
        return CtrlResult(_u32(TPM_SUCCESS))
    if code == Ctrl.CANCEL_TPM_CMD:
        return CtrlResult(_u32(TPM_SUCCESS))  # commands complete quickly; nothing to cancel
    if code == Ctrl.STORE_VOLATILE:
        device.store_volatile()
        return CtrlResult(_u32(TPM_SUCCESS))
    return CtrlResult(_u32(TPM_BAD_ORDINAL))
