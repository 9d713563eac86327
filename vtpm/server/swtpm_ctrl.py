"""swtpm's control channel protocol (include/swtpm/tpm_ioctl.h), without I/O.

A request is a big-endian UINT32 command code followed by a payload whose
size the code determines; every answer starts with a UINT32 TPM 1.2-style
result. ``payload_size`` tells a transport how many bytes to wait for and
``handle`` turns a complete request into the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from vtpm.commands.capability import FIRMWARE_VERSION, MANUFACTURER, SPEC_LEVEL, SPEC_REVISION
from vtpm.server.device import BUFFER_MAX, BUFFER_MIN, TpmDevice
from vtpm.server.protocol import (  # noqa: F401  (re-exported: the control protocol's names)
    Ctrl,
    CAP_CANCEL_TPM_CMD,
    CAP_GET_CONFIG,
    CAP_GET_INFO,
    CAP_GET_TPMESTABLISHED,
    CAP_INIT,
    CAP_RESET_TPMESTABLISHED,
    CAP_SET_BUFFERSIZE,
    CAP_SET_DATAFD,
    CAP_SET_LOCALITY,
    CAP_SHUTDOWN,
    CAP_STOP,
    CAP_STORE_VOLATILE,
    INFO_MAX_CHUNK,
    INFO_TPMATTRIBUTES,
    INFO_TPMSPECIFICATION,
    PAYLOAD_SIZES,
    TPM_BAD_LOCALITY,
    TPM_BAD_ORDINAL,
    TPM_BAD_PARAMETER,
    TPM_FAIL,
    TPM_SUCCESS,
    payload_size,
)




def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


@dataclass
class CtrlResult:
    response: bytes
    terminate: bool = False  # CMD_SHUTDOWN: the serving process should end
    accept_data_fd: bool = False  # CMD_SET_DATAFD: the transport must take the passed descriptor


def capabilities(unix: bool) -> int:
    caps = (
        CAP_INIT | CAP_SHUTDOWN | CAP_GET_TPMESTABLISHED | CAP_SET_LOCALITY | CAP_CANCEL_TPM_CMD
        | CAP_STORE_VOLATILE | CAP_RESET_TPMESTABLISHED | CAP_STOP | CAP_GET_CONFIG | CAP_SET_BUFFERSIZE
        | CAP_GET_INFO
    )
    return caps | (CAP_SET_DATAFD if unix else 0)


def info_json(flags: int) -> str:
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


def handle(device: TpmDevice, code: int, payload: bytes, *, unix: bool = False) -> CtrlResult:
    """Execute one control command against ``device``."""
    expected = payload_size(code)
    if len(payload) != expected:
        return CtrlResult(_u32(TPM_BAD_PARAMETER))
    if code == Ctrl.GET_CAPABILITY:
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(capabilities(unix)))
    if code == Ctrl.INIT:
        device.init(delete_volatile=bool(int.from_bytes(payload, "big") & 1))
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
        requested = int.from_bytes(payload, "big")
        if requested and device.running:
            return CtrlResult(_u32(TPM_BAD_ORDINAL))
        size = device.set_buffer_size(requested)
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(size) + _u32(BUFFER_MIN) + _u32(BUFFER_MAX))
    if code == Ctrl.GET_CONFIG:
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(0))
    if code == Ctrl.GET_INFO:
        flags = int.from_bytes(payload[:8], "big")
        offset = int.from_bytes(payload[8:12], "big")
        text = info_json(flags).encode() + b"\0"
        if offset >= len(text) - 1:
            return CtrlResult(_u32(TPM_BAD_PARAMETER))
        chunk = text[offset : offset + INFO_MAX_CHUNK]
        return CtrlResult(_u32(TPM_SUCCESS) + _u32(len(text)) + _u32(len(chunk)) + chunk)
    if code == Ctrl.SET_DATAFD:
        if not unix:
            return CtrlResult(_u32(TPM_FAIL))
        return CtrlResult(_u32(TPM_SUCCESS), accept_data_fd=True)
    # The rest need a running TPM.
    if not device.running:
        return CtrlResult(_u32(TPM_BAD_ORDINAL))
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
