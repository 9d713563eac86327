"""A TPM 2.0 client with an ESAPI-like method per command, over any transport.

``TpmClient(tpm)`` drives an in-process ``vtpm.engine.Tpm``; ``TpmClient(transport)``
anything in ``vtpm.transport`` (swtpm's TCP or Unix data channel, mssim). The
methods cover what the platform uses: manufacturing (EK creation, EK certificate
NV indices, PCR bank allocation), suspend and resume (Startup/Shutdown STATE),
the management plane, tests and benchmarks. Commands are framed by ``vtpm.wire``
and authorized with the password session (empty password unless given).
Every failure raises TpmCommandError with the response code; ``transact`` sends
exact bytes and returns the response as it came.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from vtpm import wire
from vtpm.constants import ALG, CAP, CC, RC, RH, SU, TPMA_NV
from vtpm.crypto import HASHES
from vtpm.marshal.structures import TPML_TAGGED_TPM_PROPERTY
from vtpm.transport import HOST, InProcessTransport, MssimTransport, SocketTransport, Transport

# The EK Credential Profile's EK certificate index: written by the platform, readable by owner and
# with its (empty) authValue, never deletable by the owner.
EK_CERT_NV_ATTRIBUTES = (TPMA_NV.PPWRITE | TPMA_NV.WRITEDEFINE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD
                         | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA | TPMA_NV.PLATFORMCREATE)
ALL_PCRS = range(24)


class TpmCommandError(Exception):
    """A command answered with a response code other than TPM_RC_SUCCESS."""

    def __init__(self, command: str, rc: int) -> None:
        super().__init__(f"{command} failed with TPM response code 0x{rc:03x} ({wire.describe_rc(rc)})")
        self.command = command
        self.rc = rc


class TpmClient(contextlib.AbstractContextManager):
    """Commands to one TPM. Not thread-safe: one command at a time, as on the TPM.
    As a context manager it closes its transport."""

    def __init__(self, transport: Transport | Any, locality: int = 0) -> None:
        if not hasattr(transport, "transact"):  # an engine: Tpm.execute(locality, command)
            transport = InProcessTransport(transport, locality)
        self.transport: Transport = transport

    @classmethod
    def swtpm_tcp(cls, port: int, host: str = HOST, timeout: float | None = 10.0) -> "TpmClient":
        """A client of swtpm's (or ``vtpm serve``'s) TCP data port."""
        return cls(SocketTransport.tcp(port, host, timeout))

    @classmethod
    def swtpm_unix(cls, path: str, timeout: float | None = 10.0) -> "TpmClient":
        """A client of swtpm's (or ``vtpm serve``'s) Unix data socket."""
        return cls(SocketTransport.unix(path, timeout))

    @classmethod
    def mssim(cls, port: int, host: str = HOST, locality: int = 0) -> "TpmClient":
        """A client of a TPM speaking the Microsoft simulator protocol (command port ``port``, platform port + 1)."""
        return cls(MssimTransport(port, host, locality))

    @property
    def tpm(self) -> Any:
        """The in-process engine behind an in-process client."""
        return getattr(self.transport, "tpm", None)

    def close(self) -> None:
        """Close the connection (nothing to close for an in-process engine)."""
        self.transport.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ framing

    def transact(self, command: bytes) -> bytes:
        """Send exact command bytes; the response exactly as the TPM sent it (no check)."""
        return self.transport.transact(command)

    def call(self, command: bytes, name: str | None = None) -> wire.Response:
        """Send a framed command; its parsed response, or TpmCommandError."""
        response = wire.parse_response(self.transact(command))
        if not response.ok:
            code = wire.parse_header(command)[2]
            raise TpmCommandError(name or _command_name(code), response.rc)
        return response

    # ------------------------------------------------------------------ start-up

    def startup(self, clear: bool = True) -> None:
        """TPM2_Startup: CLEAR (a reboot) or STATE (resume what Shutdown(STATE) saved)."""
        self.call(wire.startup(SU.CLEAR if clear else SU.STATE))

    def shutdown(self, clear: bool = True) -> None:
        """TPM2_Shutdown: CLEAR, or STATE to keep sessions and PCRs for a Startup(STATE)."""
        self.call(wire.shutdown(SU.CLEAR if clear else SU.STATE))

    # ------------------------------------------------------------------ objects

    def create_primary(self, hierarchy: int, template: bytes, password: bytes = b"") -> tuple[int, bytes]:
        """(handle, TPMT_PUBLIC) of a new primary object."""
        response = self.call(wire.create_primary(template, hierarchy, password=password))
        (handle,), params, _ = response.split(1)
        size = int.from_bytes(params[:2], "big")
        return handle, params[2 : 2 + size]

    def flush(self, handle: int) -> None:
        """FlushContext: free a loaded object or session."""
        self.call(wire.flush_context(handle))

    # ------------------------------------------------------------------ NV

    def nv_define(self, index: int, attributes: int, size: int, name_alg: int = ALG.SHA256,
                  auth_handle: int = RH.PLATFORM, *, auth: bytes = b"", policy: bytes = b"",
                  password: bytes = b"") -> None:
        """NV_DefineSpace under ``auth_handle`` (platform by default)."""
        self.call(wire.nv_define_space(index, attributes, size, auth=auth, name_alg=name_alg, policy=policy,
                                       auth_handle=auth_handle, password=password))

    def nv_undefine(self, index: int, auth_handle: int = RH.PLATFORM, password: bytes = b"") -> None:
        """NV_UndefineSpace: remove the index."""
        self.call(wire.nv_undefine_space(index, auth_handle, password))

    def nv_write(self, index: int, data: bytes, auth_handle: int = RH.PLATFORM, *, offset: int = 0,
                 password: bytes = b"") -> None:
        """Write ``data`` at ``offset``, in chunks of at most MAX_NV_BUFFER_SIZE."""
        for start in range(0, len(data), wire.NV_CHUNK):
            chunk = data[start : start + wire.NV_CHUNK]
            self.call(wire.nv_write(index, chunk, offset + start, auth_handle=auth_handle, password=password))

    def nv_public(self, index: int) -> wire.NvPublic:
        """NV_ReadPublic: the index's public area and Name."""
        return wire.parse_nv_read_public(self.call(wire.nv_read_public(index)).parameters())

    def nv_read_public(self, index: int) -> int:
        """The index's data size (NV_ReadPublic)."""
        return self.nv_public(index).size

    def nv_read(self, index: int, size: int, auth_handle: int = RH.OWNER, *, offset: int = 0,
                password: bytes = b"") -> bytes:
        """Read ``size`` bytes from ``offset``, in chunks of at most MAX_NV_BUFFER_SIZE."""
        out = b""
        for start in range(0, size, wire.NV_CHUNK):
            chunk = min(wire.NV_CHUNK, size - start)
            params = self.call(wire.nv_read(index, chunk, offset + start, auth_handle=auth_handle,
                                            password=password)).parameters()
            out += params[2 : 2 + int.from_bytes(params[:2], "big")]
        return out

    # ------------------------------------------------------------------ PCRs

    def pcr_allocate(self, banks: Iterable[int], supported: Iterable[int] | None = None) -> None:
        """Allocate PCRs 0-23 in ``banks`` and none in the other ``supported`` banks (default: the
        vTPM's hash algorithms); takes effect at the next _TPM_Init."""
        if supported is None:
            supported = HASHES
        banks = set(banks)
        self.call(wire.pcr_allocate([(alg, ALL_PCRS if alg in banks else ()) for alg in sorted(supported)]))

    def pcr_read(self, selections: Mapping[int, Iterable[int]] | Iterable[tuple[int, Iterable[int]]]
                 ) -> dict[int, dict[int, bytes]]:
        """{bank: {pcr: value}} for the selected PCRs of allocated banks, over as many PCR_Read
        commands as the TPM needs (it returns at most 8 digests at a time)."""
        pending = {alg: set(pcrs) for alg, pcrs in wire.selection_items(selections)}
        values: dict[int, dict[int, bytes]] = {alg: {} for alg in pending}
        while any(pending.values()):
            params = self.call(wire.pcr_read([(alg, pcrs) for alg, pcrs in pending.items()])).parameters()
            out = wire.PCR_READ_OUT.parse(params)
            digests = iter(out.pcrValues)
            returned = False
            for selection in out.pcrSelectionOut:
                for pcr in wire.pcrs_in(selection.pcrSelect):
                    values[selection.hash][pcr] = next(digests)
                    pending[selection.hash].discard(pcr)
                    returned = True
            if not returned:  # what is left is in no allocated bank
                break
        return values

    def pcr_extend(self, pcr: int, digests: Mapping[int, bytes] | Iterable[tuple[int, bytes]],
                   password: bytes = b"") -> None:
        """PCR_Extend: extend ``pcr`` in each bank named in ``digests`` by its digest."""
        self.call(wire.pcr_extend(pcr, digests, password))

    def pcr_reset(self, pcr: int, password: bytes = b"") -> None:
        """PCR_Reset: back to the initial value (only the resettable PCRs, from the right locality)."""
        self.call(wire.pcr_reset(pcr, password))

    # ------------------------------------------------------------------ random, capabilities

    def get_random(self, count: int) -> bytes:
        """``count`` random bytes, over as many GetRandom commands as the TPM needs."""
        out = b""
        while len(out) < count:
            params = self.call(wire.get_random(count - len(out))).parameters()
            chunk = params[2 : 2 + int.from_bytes(params[:2], "big")]
            if not chunk:
                raise TpmCommandError("GetRandom", RC.NO_RESULT)
            out += chunk
        return out

    def get_capability(self, capability: int, prop: int, count: int) -> tuple[bool, bytes]:
        """(moreData, the capability's list) of GetCapability; the list is left for the caller to parse."""
        params = self.call(wire.get_capability(capability, prop, count)).parameters()
        return bool(params[0]), params[5:]  # moreData, capability (UINT32), the TPMU_CAPABILITIES list

    def tpm_properties(self, first: int, count: int = 1) -> dict[int, int]:
        """{TPM_PT: value} from GetCapability(TPM_PROPERTIES)."""
        _, data = self.get_capability(CAP.TPM_PROPERTIES, first, count)
        return {int(p.property): int(p.value) for p in TPML_TAGGED_TPM_PROPERTY.parse(data)}

    def pcr_banks(self) -> list[int]:
        """The hash algorithms with at least one PCR allocated (GetCapability(PCRS))."""
        _, data = self.get_capability(CAP.PCRS, 0, 1)
        return [int(s.hash) for s in wire.PCR_SELECTION_OUT.parse(data) if any(s.pcrSelect)]


def _command_name(code: int) -> str:
    try:
        return CC(code).name
    except ValueError:
        return f"command 0x{code:08x}"
