"""A small in-process TPM client: the commands a platform runs while manufacturing a vTPM
(EK creation, EK certificate NV indices, PCR bank allocation), built from the same wire
types the engine parses. Every failure raises TpmCommandError with the response code."""

from __future__ import annotations

from dataclasses import dataclass

from vtpm.constants import CC, RC, RH, ST, SU, TPMA_NV
from vtpm.engine import Tpm
from vtpm.marshal.structures import TPM2B_MAX_NV_BUFFER, TPM2B_NV_PUBLIC, TPML_PCR_SELECTION

PASSWORD_SESSION = RH.PW.to_bytes(4, "big") + b"\x00\x00" + b"\x01" + b"\x00\x00"
# The EK Credential Profile's EK certificate index: written by the platform, readable by owner and
# with its (empty) authValue, never deletable by the owner.
EK_CERT_NV_ATTRIBUTES = (TPMA_NV.PPWRITE | TPMA_NV.WRITEDEFINE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD
                         | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA | TPMA_NV.PLATFORMCREATE)


class TpmCommandError(Exception):
    def __init__(self, command: str, rc: int) -> None:
        super().__init__(f"{command} failed with TPM response code 0x{rc:03x}")
        self.rc = rc


@dataclass
class TpmClient:
    tpm: Tpm
    locality: int = 0

    def _run(self, name: str, code: int, handles: tuple[int, ...] = (), params: bytes = b"", auth: bool = False) -> bytes:
        area = b"".join(h.to_bytes(4, "big") for h in handles)
        tag = ST.NO_SESSIONS
        if auth:
            tag = ST.SESSIONS
            area += len(PASSWORD_SESSION).to_bytes(4, "big") + PASSWORD_SESSION
        body = area + params
        command = tag.to_bytes(2, "big") + (10 + len(body)).to_bytes(4, "big") + code.to_bytes(4, "big") + body
        response = self.tpm.execute(self.locality, command)
        rc = int.from_bytes(response[6:10], "big")
        if rc != RC.SUCCESS:
            raise TpmCommandError(name, rc)
        return response

    def startup(self, clear: bool = True) -> None:
        self._run("Startup", CC.Startup, params=(SU.CLEAR if clear else SU.STATE).to_bytes(2, "big"))

    def shutdown(self, clear: bool = True) -> None:
        self._run("Shutdown", CC.Shutdown, params=(SU.CLEAR if clear else SU.STATE).to_bytes(2, "big"))

    def create_primary(self, hierarchy: int, template: bytes) -> tuple[int, bytes]:
        """(handle, TPMT_PUBLIC) of a new primary object."""
        params = (4).to_bytes(2, "big") + bytes(4)  # empty TPM2B_SENSITIVE_CREATE
        params += len(template).to_bytes(2, "big") + template + b"\x00\x00" + bytes(4)
        response = self._run("CreatePrimary", CC.CreatePrimary, (hierarchy,), params, auth=True)
        handle = int.from_bytes(response[10:14], "big")
        size = int.from_bytes(response[18:20], "big")
        return handle, response[20 : 20 + size]

    def flush(self, handle: int) -> None:
        self._run("FlushContext", CC.FlushContext, params=handle.to_bytes(4, "big"))

    def nv_define(self, index: int, attributes: int, size: int, name_alg: int = 0x000B, auth_handle: int = RH.PLATFORM) -> None:
        public = TPM2B_NV_PUBLIC.build({"nvIndex": index, "nameAlg": name_alg, "attributes": int(attributes),
                                        "authPolicy": b"", "dataSize": size})
        self._run("NV_DefineSpace", CC.NV_DefineSpace, (auth_handle,), b"\x00\x00" + public, auth=True)

    def nv_undefine(self, index: int, auth_handle: int = RH.PLATFORM) -> None:
        self._run("NV_UndefineSpace", CC.NV_UndefineSpace, (auth_handle, index), auth=True)

    def nv_write(self, index: int, data: bytes, auth_handle: int = RH.PLATFORM) -> None:
        for offset in range(0, len(data), 1024):
            chunk = data[offset : offset + 1024]
            params = TPM2B_MAX_NV_BUFFER.build(chunk) + offset.to_bytes(2, "big")
            self._run("NV_Write", CC.NV_Write, (auth_handle, index), params, auth=True)

    def nv_read_public(self, index: int) -> int:
        """The index's data size (NV_ReadPublic)."""
        response = self._run("NV_ReadPublic", CC.NV_ReadPublic, (index,))
        public = TPM2B_NV_PUBLIC.parse(response[10:])
        return int(public.dataSize)

    def nv_read(self, index: int, size: int, auth_handle: int = RH.OWNER) -> bytes:
        out = b""
        for offset in range(0, size, 1024):
            chunk = min(1024, size - offset)
            response = self._run("NV_Read", CC.NV_Read, (auth_handle, index),
                                 chunk.to_bytes(2, "big") + offset.to_bytes(2, "big"), auth=True)
            n = int.from_bytes(response[14:16], "big")
            out += response[16 : 16 + n]
        return out

    def pcr_allocate(self, banks: list[int]) -> None:
        from vtpm.crypto import HASHES

        selection = [{"hash": alg, "pcrSelect": b"\xff\xff\xff" if alg in banks else b"\x00\x00\x00"}
                     for alg in sorted(HASHES)]
        self._run("PCR_Allocate", CC.PCR_Allocate, (RH.PLATFORM,), TPML_PCR_SELECTION.build(selection), auth=True)
