"""TPM 2.0 command and response framing, without I/O.

This module is the one place where TPM 2.0 bytes are framed: the 10-byte
header (tag, size, command or response code), the handle area, the
authorization area with its size, and the parameters (TPM 2.0 Part 1,
section 18; Part 3, section 5). Everything that sends a command or answers
one -- the in-process and socket clients, the servers, vmcrypt's suspend and
resume, the test helpers and benchmarks -- builds and reads frames here, so
there is one definition of the layout to keep right.

Parameters are built with the wire types of ``vtpm.marshal`` where they exist.
Builders take any values, malformed ones included (a wrong digest size, an
unknown algorithm, a tag that is not a TPM 2.0 tag), because tests send those
on purpose; whether a command is acceptable is for the TPM to say.

Only ``vtpm.constants``, ``vtpm.marshal`` and the standard library are used:
clients and servers can frame bytes without loading the engine.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

import construct as cs

from vtpm.constants import ALG, CC, RC, RC_FMT1, RC_N_SHIFT, RC_P, RC_S, RH, ST, SU, TPMA_SESSION
from vtpm.marshal.objects import TPM2B_SENSITIVE_CREATE
from vtpm.marshal.primitives import U8, U16, U32
from vtpm.marshal.structures import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMS_NV_PUBLIC

HEADER = struct.Struct(">HII")  # tag, size, command code (commands) or response code (responses)
HEADER_SIZE = HEADER.size
PCR_SELECT_SIZE = 3  # sizeofSelect for PCRs 0-23 (PC Client)
NV_CHUNK = 1024  # MAX_NV_BUFFER_SIZE: what one NV_Read or NV_Write moves at the most

Sessions = Union[bytes, Sequence[bytes], None]
PcrSelections = Union[Mapping[int, Iterable[int]], Iterable[tuple[int, Iterable[int]]]]


class WireError(ValueError):
    """Bytes that are not a TPM 2.0 response frame (too short, or a size field that lies)."""


# ----------------------------------------------------------------------------- primitives


def tpm2b(data: bytes) -> bytes:
    """A TPM2B_* buffer: UINT16 size, then the bytes (any length up to 65535, for tests of limits)."""
    return len(data).to_bytes(2, "big") + bytes(data)


def auth_entry(handle: int, nonce: bytes = b"", attributes: int = TPMA_SESSION.CONTINUE_SESSION,
               hmac: bytes = b"") -> bytes:
    """One TPMS_AUTH_COMMAND: session handle, nonceCaller, sessionAttributes, hmac (or password)."""
    return U32.build(handle) + tpm2b(nonce) + U8.build(attributes) + tpm2b(hmac)


def password_session(password: bytes = b"", attributes: int = TPMA_SESSION.CONTINUE_SESSION,
                     nonce: bytes = b"") -> bytes:
    """The password authorization entry (TPM_RS_PW); a nonce is only there for tests that send one."""
    return auth_entry(RH.PW, nonce, attributes, password)


PASSWORD_SESSION = password_session()


def authorization_area(sessions: bytes | Sequence[bytes]) -> bytes:
    """authorizationSize, then the entries (bytes: the entries already joined)."""
    area = sessions if isinstance(sessions, (bytes, bytearray)) else b"".join(sessions)
    return U32.build(len(area)) + bytes(area)


# ----------------------------------------------------------------------------- commands


def build_command(code: int, handles: Iterable[int] = (), params: bytes = b"", sessions: Sessions = None,
                  *, tag: int | None = None) -> bytes:
    """A command frame: header, handle area, authorization area (when ``sessions`` is given), parameters.

    ``sessions`` is None (no authorization area: TPM_ST_NO_SESSIONS), the
    joined TPMS_AUTH_COMMAND entries as bytes, or a list of entries; with an
    authorization area the tag is TPM_ST_SESSIONS. ``tag`` overrides the tag.
    """
    body = b"".join(U32.build(h) for h in handles)
    if sessions is not None:
        body += authorization_area(sessions)
    body += params
    if tag is None:
        tag = ST.NO_SESSIONS if sessions is None else ST.SESSIONS
    return HEADER.pack(tag, HEADER_SIZE + len(body), code) + body


def parse_header(frame: bytes) -> tuple[int, int, int]:
    """(tag, size, code) of a command or response header; the code is the response code in a response."""
    if len(frame) < HEADER_SIZE:
        raise WireError(f"a TPM frame has a {HEADER_SIZE}-byte header, got {len(frame)} bytes")
    return HEADER.unpack_from(frame)


# ----------------------------------------------------------------------------- responses


def error_response(rc: int) -> bytes:
    """The response to a failed command: TPM_ST_NO_SESSIONS, size 10, ``rc``, nothing else."""
    return HEADER.pack(ST.NO_SESSIONS, HEADER_SIZE, rc)


def response_code(response: bytes) -> int:
    """The response code of a response; -1 when there is no complete header."""
    return int.from_bytes(response[6:10], "big") if len(response) >= HEADER_SIZE else -1


class Response(NamedTuple):
    """A parsed response frame: ``tag, rc, body = parse_response(data)``; body follows the header."""

    tag: int
    rc: int
    body: bytes

    @property
    def ok(self) -> bool:
        """Whether the response code is TPM_RC_SUCCESS."""
        return self.rc == RC.SUCCESS

    def split(self, handles: int = 0) -> tuple[tuple[int, ...], bytes, bytes]:
        """(handles, parameters, authorization area) of a successful response with ``handles`` handles.

        With TPM_ST_SESSIONS the parameters are preceded by parameterSize and
        followed by the TPMS_AUTH_RESPONSE entries; without, they run to the end.
        """
        end = 4 * handles
        if len(self.body) < end:
            raise WireError(f"the response has no room for {handles} handle(s)")
        values = tuple(int.from_bytes(self.body[i : i + 4], "big") for i in range(0, end, 4))
        if self.tag != ST.SESSIONS:
            return values, self.body[end:], b""
        if len(self.body) < end + 4:
            raise WireError("the response has no parameterSize")
        size = int.from_bytes(self.body[end : end + 4], "big")
        start = end + 4
        if start + size > len(self.body):
            raise WireError("parameterSize runs past the end of the response")
        return values, self.body[start : start + size], self.body[start + size :]

    def parameters(self, handles: int = 0) -> bytes:
        """The response parameters only (see ``split``); WireError if the frame is too short for them."""
        return self.split(handles)[1]


def parse_response(response: bytes) -> Response:
    """Check the header against the length and split it from the body."""
    tag, size, rc = parse_header(response)
    if size != len(response):
        raise WireError(f"the response header says {size} bytes, the frame has {len(response)}")
    return Response(tag, rc, bytes(response[HEADER_SIZE:]))


def describe_rc(rc: int) -> str:
    """A response code as text: its name plus the handle, parameter or session it names."""
    if rc == RC.SUCCESS:
        return "TPM_RC_SUCCESS"
    where = ""
    base = rc
    if rc & RC_FMT1:
        base = RC_FMT1 | (rc & 0x3F)
        number = (rc >> RC_N_SHIFT) & 0xF
        if rc & RC_P:
            where = f" parameter {number}"
        elif number & (RC_S >> RC_N_SHIFT):
            where = f" session {number & 0x7}"
        elif number:
            where = f" handle {number}"
    try:
        return f"TPM_RC_{RC(base).name}{where}"
    except ValueError:
        return f"0x{base:03x}{where}"


# ----------------------------------------------------------------------------- PCR selections


def pcr_bitmap(pcrs: Iterable[int], size_of_select: int = PCR_SELECT_SIZE) -> bytes:
    """The pcrSelect bitmap of a TPMS_PCR_SELECTION (PCR n is bit n % 8 of byte n // 8); IndexError for a PCR beyond
    ``size_of_select`` bytes."""
    bits = bytearray(size_of_select)
    for pcr in pcrs:
        bits[pcr // 8] |= 1 << (pcr % 8)
    return bytes(bits)


def pcrs_in(bitmap: bytes) -> list[int]:
    """The PCR numbers a pcrSelect bitmap selects."""
    return [8 * i + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1]


def selection_items(selections: PcrSelections) -> list[tuple[int, Iterable[int]]]:
    """[(alg, pcrs), ...] from {alg: pcrs} or pairs."""
    return list(selections.items()) if isinstance(selections, Mapping) else list(selections)


def pcr_selection(selections: PcrSelections, size_of_select: int = PCR_SELECT_SIZE) -> bytes:
    """TPML_PCR_SELECTION from {alg: pcrs} or [(alg, pcrs), ...] (the order is kept)."""
    return TPML_PCR_SELECTION.build(
        [{"hash": alg, "pcrSelect": pcr_bitmap(pcrs, size_of_select)} for alg, pcrs in selection_items(selections)])


# Responses are read leniently: a bank or select size this vTPM does not know may come from another TPM.
PCR_SELECTION_OUT = cs.PrefixedArray(U32, cs.Struct("hash" / U16, "pcrSelect" / cs.Prefixed(U8, cs.GreedyBytes)))
DIGEST_LIST_OUT = cs.PrefixedArray(U32, cs.Prefixed(U16, cs.GreedyBytes))
PCR_READ_OUT = cs.Struct("pcrUpdateCounter" / U32, "pcrSelectionOut" / PCR_SELECTION_OUT,
                         "pcrValues" / DIGEST_LIST_OUT)


# ----------------------------------------------------------------------------- common commands


def startup(su: int = SU.CLEAR) -> bytes:
    """A TPM2_Startup command frame (Part 3 9.3) with startupType ``su``."""
    return build_command(CC.Startup, params=U16.build(su))


def shutdown(su: int = SU.CLEAR) -> bytes:
    """A TPM2_Shutdown command frame (Part 3 9.4) with shutdownType ``su``."""
    return build_command(CC.Shutdown, params=U16.build(su))


STARTUP_CLEAR = startup(SU.CLEAR)
STARTUP_STATE = startup(SU.STATE)
SHUTDOWN_CLEAR = shutdown(SU.CLEAR)
SHUTDOWN_STATE = shutdown(SU.STATE)


def get_random(count: int) -> bytes:
    """A TPM2_GetRandom command frame (Part 3 16.1) asking for ``count`` bytes."""
    return build_command(CC.GetRandom, params=U16.build(count))


def get_capability(capability: int, prop: int, count: int) -> bytes:
    """A TPM2_GetCapability command frame (Part 3 30.2)."""
    return build_command(CC.GetCapability, params=U32.build(capability) + U32.build(prop) + U32.build(count))


def flush_context(handle: int) -> bytes:
    """A TPM2_FlushContext command frame (Part 3 28.4) for a loaded object or session handle."""
    return build_command(CC.FlushContext, params=U32.build(handle))


def pcr_read(selections: PcrSelections, size_of_select: int = PCR_SELECT_SIZE) -> bytes:
    """A TPM2_PCR_Read command frame (Part 3 22.4) for the banks and PCRs selected."""
    return build_command(CC.PCR_Read, params=pcr_selection(selections, size_of_select))


def pcr_extend(pcr: int, digests: Mapping[int, bytes] | Iterable[tuple[int, bytes]], password: bytes = b"",
               attributes: int = TPMA_SESSION.CONTINUE_SESSION) -> bytes:
    """PCR_Extend with the PCR's authValue in a password session; digests as {alg: digest} or pairs."""
    pairs = digests.items() if isinstance(digests, Mapping) else digests
    values = TPML_DIGEST_VALUES.build([{"hashAlg": alg, "digest": digest} for alg, digest in pairs])
    return build_command(CC.PCR_Extend, [pcr], values, password_session(password, attributes))


def pcr_reset(pcr: int, password: bytes = b"") -> bytes:
    """A TPM2_PCR_Reset command frame (Part 3 22.8) authorized with a password session."""
    return build_command(CC.PCR_Reset, [pcr], sessions=password_session(password))


def pcr_allocate(selections: PcrSelections, auth_handle: int = RH.PLATFORM, password: bytes = b"") -> bytes:
    """A TPM2_PCR_Allocate command frame (Part 3 22.5), by default with platformAuth."""
    return build_command(CC.PCR_Allocate, [auth_handle], pcr_selection(selections), password_session(password))


def nv_public(index: int, attributes: int, size: int, name_alg: int = ALG.SHA256, policy: bytes = b"") -> bytes:
    """TPMS_NV_PUBLIC (without the TPM2B size); its hash is the index's Name."""
    return TPMS_NV_PUBLIC.build({"nvIndex": index, "nameAlg": name_alg, "attributes": int(attributes),
                                 "authPolicy": policy, "dataSize": size})


def nv_define_space(index: int, attributes: int, size: int, *, auth: bytes = b"", name_alg: int = ALG.SHA256,
                    policy: bytes = b"", auth_handle: int = RH.OWNER, password: bytes = b"") -> bytes:
    """A TPM2_NV_DefineSpace command frame (Part 3 31.3) with a TPMS_NV_PUBLIC built from the arguments, by default
    under ownerAuth."""
    params = tpm2b(auth) + tpm2b(nv_public(index, attributes, size, name_alg, policy))
    return build_command(CC.NV_DefineSpace, [auth_handle], params, password_session(password))


def nv_undefine_space(index: int, auth_handle: int = RH.OWNER, password: bytes = b"") -> bytes:
    """A TPM2_NV_UndefineSpace command frame (Part 3 31.4), by default under ownerAuth."""
    return build_command(CC.NV_UndefineSpace, [auth_handle, index], sessions=password_session(password))


def nv_read_public(index: int) -> bytes:
    """A TPM2_NV_ReadPublic command frame (Part 3 31.6)."""
    return build_command(CC.NV_ReadPublic, [index])


def nv_write(index: int, data: bytes, offset: int = 0, *, auth_handle: int | None = None,
             password: bytes = b"") -> bytes:
    """NV_Write authorized by ``auth_handle`` (default: the index itself) with a password session."""
    return build_command(CC.NV_Write, [auth_handle or index, index], tpm2b(data) + U16.build(offset),
                         password_session(password))


def nv_read(index: int, size: int, offset: int = 0, *, auth_handle: int | None = None,
            password: bytes = b"") -> bytes:
    """NV_Read authorized by ``auth_handle`` (default: the index itself) with a password session."""
    return build_command(CC.NV_Read, [auth_handle or index, index], U16.build(size) + U16.build(offset),
                         password_session(password))


def create_primary(template: bytes, hierarchy: int = RH.OWNER, *, user_auth: bytes = b"", data: bytes = b"",
                   outside_info: bytes = b"", creation_pcrs: PcrSelections = (), password: bytes = b"") -> bytes:
    """CreatePrimary of ``template`` (a TPMT_PUBLIC) under ``hierarchy``, authorized by its password."""
    params = (TPM2B_SENSITIVE_CREATE.build({"userAuth": user_auth, "data": data}) + tpm2b(template)
              + tpm2b(outside_info) + pcr_selection(creation_pcrs))
    return build_command(CC.CreatePrimary, [hierarchy], params, password_session(password))


@dataclass(frozen=True)
class NvPublic:
    """TPMS_NV_PUBLIC and the Name an NV_ReadPublic response returns."""

    index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    size: int
    name: bytes


def parse_nv_read_public(parameters: bytes) -> NvPublic:
    """The parameters of an NV_ReadPublic response: TPM2B_NV_PUBLIC, TPM2B_NAME."""
    public_size = int.from_bytes(parameters[:2], "big")
    public = TPMS_NV_PUBLIC.parse(parameters[2 : 2 + public_size])
    rest = parameters[2 + public_size :]
    name = rest[2 : 2 + int.from_bytes(rest[:2], "big")]
    return NvPublic(int(public.nvIndex), int(public.nameAlg), int(public.attributes), bytes(public.authPolicy),
                    int(public.dataSize), bytes(name))
