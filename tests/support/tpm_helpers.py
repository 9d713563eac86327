"""Raw TPM 2.0 over TCP: build commands, send them, read responses (servers: support.servers).

Commands are framed by ``vtpm.wire`` (header, handle area, authorization area,
parameters, as in TPM 2.0 Part 3) so that both TPMs see exactly the same bytes;
the builders here are the test suite's names for them, plus the policy
commands only tests send. Only loopback addresses are used.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

from vtpm import constants, wire
from vtpm.client import TpmClient
from vtpm.constants import ALG, CAP, NT, RH, ST, SU, TPMA_NV, TPMA_SESSION
from vtpm.engine import Tpm
from vtpm.marshal.primitives import I32, U8, U16, U32, U64
from vtpm.transport import SocketTransport, SwtpmControl, TransportError

if TYPE_CHECKING:
    from support.servers import TpmServer

HOST = "127.0.0.1"

# ----------------------------------------------------------------------------- constants (Part 2)

TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS = ST.NO_SESSIONS, ST.SESSIONS
TPM_SU_CLEAR, TPM_SU_STATE = SU.CLEAR, SU.STATE
TPM_RH_OWNER, TPM_RH_NULL, TPM_RS_PW = RH.OWNER, RH.NULL, RH.PW
TPM_RH_ENDORSEMENT, TPM_RH_PLATFORM = RH.ENDORSEMENT, RH.PLATFORM

TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ALG_SHA384, TPM_ALG_SHA512 = ALG.SHA1, ALG.SHA256, ALG.SHA384, ALG.SHA512
TPM_ALG_NULL, TPM_ALG_SM3_256 = ALG.NULL, ALG.SM3_256
DIGEST_SIZES = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48, TPM_ALG_SHA512: 64}
HASH_NAMES = {TPM_ALG_SHA1: "sha1", TPM_ALG_SHA256: "sha256", TPM_ALG_SHA384: "sha384", TPM_ALG_SHA512: "sha512"}

TPM_CAP_ALGS, TPM_CAP_HANDLES, TPM_CAP_COMMANDS = CAP.ALGS, CAP.HANDLES, CAP.COMMANDS
TPM_CAP_PCRS, TPM_CAP_TPM_PROPERTIES, TPM_CAP_PCR_PROPERTIES = CAP.PCRS, CAP.TPM_PROPERTIES, CAP.PCR_PROPERTIES

TPMA_SESSION_CONTINUE = TPMA_SESSION.CONTINUE_SESSION

TPMA_NV_PPWRITE, TPMA_NV_OWNERWRITE = TPMA_NV.PPWRITE, TPMA_NV.OWNERWRITE
TPMA_NV_AUTHWRITE, TPMA_NV_POLICYWRITE = TPMA_NV.AUTHWRITE, TPMA_NV.POLICYWRITE
TPM_NT_ORDINARY, TPM_NT_COUNTER, TPM_NT_BITS, TPM_NT_EXTEND = (kind << 4 for kind in (NT.ORDINARY, NT.COUNTER,
                                                                                        NT.BITS, NT.EXTEND))
TPMA_NV_WRITEALL, TPMA_NV_PPREAD, TPMA_NV_OWNERREAD = TPMA_NV.WRITEALL, TPMA_NV.PPREAD, TPMA_NV.OWNERREAD
TPMA_NV_AUTHREAD, TPMA_NV_POLICYREAD, TPMA_NV_NO_DA = TPMA_NV.AUTHREAD, TPMA_NV.POLICYREAD, TPMA_NV.NO_DA
TPMA_NV_ORDERLY, TPMA_NV_WRITTEN = TPMA_NV.ORDERLY, TPMA_NV.WRITTEN

CC = {code.name: int(code) for code in constants.CC}  # CC["NV_Read"] == 0x14E

# ----------------------------------------------------------------------------- marshalling (vtpm.wire)

u8, u16, u32, u64 = U8.build, U16.build, U32.build, U64.build
describe_rc = wire.describe_rc
response_code = wire.response_code
tpm2b = wire.tpm2b
pw_session = wire.password_session  # (password=b"", attributes=continueSession)
tpml_pcr_selection = wire.pcr_selection  # ([(alg, pcrs), ...], size_of_select=3)
startup, get_random, get_capability, flush_context = wire.startup, wire.get_random, wire.get_capability, wire.flush_context
pcr_read, pcr_extend, pcr_reset = wire.pcr_read, wire.pcr_extend, wire.pcr_reset
nv_public, nv_define_space, nv_undefine_space = wire.nv_public, wire.nv_define_space, wire.nv_undefine_space
nv_read_public, nv_write, nv_read = wire.nv_read_public, wire.nv_write, wire.nv_read


def build_command(code: int, handles: tuple[int, ...] | list[int] = (), params: bytes = b"",
                  auth: bytes | None = None, tag: int | None = None) -> bytes:
    """A command: header, handle area, optional authorization area (``auth``: its entries), parameters."""
    return wire.build_command(code, handles, params, auth, tag=tag)


def hash_command(data: bytes, alg: int, hierarchy: int = TPM_RH_NULL) -> bytes:
    return build_command(CC["Hash"], params=tpm2b(data) + u16(alg) + u32(hierarchy))


def nv_increment(index: int, *, auth_handle: int | None = None, password: bytes = b"") -> bytes:
    return build_command(CC["NV_Increment"], [auth_handle or index, index], auth=pw_session(password))


def nv_set_bits(index: int, bits: int, *, auth_handle: int | None = None, password: bytes = b"") -> bytes:
    return build_command(CC["NV_SetBits"], [auth_handle or index, index], u64(bits), auth=pw_session(password))


def nv_extend(index: int, data: bytes, *, auth_handle: int | None = None, password: bytes = b"") -> bytes:
    return build_command(CC["NV_Extend"], [auth_handle or index, index], tpm2b(data), auth=pw_session(password))


# ----------------------------------------------------------------------------- sessions and policy commands

TPM_SE_HMAC = 0x00
TPM_SE_POLICY = 0x01
TPM_SE_TRIAL = 0x03


def start_auth_session(session_type: int, auth_hash: int = TPM_ALG_SHA256, nonce_caller: bytes = bytes(range(16)),
                       bind: int = TPM_RH_NULL) -> bytes:
    """StartAuthSession: unsalted, no parameter encryption (symmetric TPM_ALG_NULL)."""
    params = tpm2b(nonce_caller) + tpm2b(b"") + u8(session_type) + u16(TPM_ALG_NULL) + u16(auth_hash)
    return build_command(CC["StartAuthSession"], [TPM_RH_NULL, bind], params)


def session_from_response(response: bytes) -> tuple[int, bytes]:
    """(sessionHandle, nonceTPM) from a StartAuthSession response."""
    (handle,), params, _ = wire.parse_response(response).split(1)
    return handle, params[2 : 2 + int.from_bytes(params[:2], "big")]


def policy_simple(name: str, session: int) -> bytes:
    """A policy command whose only input is the session: PolicyAuthValue, PolicyPassword,
    PolicyRestart, PolicyGetDigest."""
    return build_command(CC[name], [session])


def policy_pcr(session: int, pcr_digest: bytes, selections: list[tuple[int, list[int] | range]]) -> bytes:
    return build_command(CC["PolicyPCR"], [session], tpm2b(pcr_digest) + tpml_pcr_selection(selections))


def policy_command_code(session: int, code: int) -> bytes:
    return build_command(CC["PolicyCommandCode"], [session], u32(code))


def policy_digest_param(name: str, session: int, value: bytes) -> bytes:
    """PolicyCpHash or PolicyNameHash: one TPM2B_DIGEST."""
    return build_command(CC[name], [session], tpm2b(value))


def policy_or(session: int, digests: list[bytes]) -> bytes:
    return build_command(CC["PolicyOR"], [session], u32(len(digests)) + b"".join(tpm2b(d) for d in digests))


def policy_locality(session: int, locality: int) -> bytes:
    return build_command(CC["PolicyLocality"], [session], u8(locality))


def policy_nv_written(session: int, written: int) -> bytes:
    return build_command(CC["PolicyNvWritten"], [session], u8(written))


def policy_nv(auth_handle: int, index: int, session: int, operand: bytes, offset: int, operation: int,
              password: bytes = b"") -> bytes:
    return build_command(CC["PolicyNV"], [auth_handle, index, session], tpm2b(operand) + u16(offset) + u16(operation),
                         auth=pw_session(password))


def policy_counter_timer(session: int, operand: bytes, offset: int, operation: int) -> bytes:
    return build_command(CC["PolicyCounterTimer"], [session], tpm2b(operand) + u16(offset) + u16(operation))


def policy_secret(auth_handle: int, session: int, *, nonce_tpm: bytes = b"", cp_hash: bytes = b"",
                  policy_ref: bytes = b"", expiration: int = 0, password: bytes = b"") -> bytes:
    params = tpm2b(nonce_tpm) + tpm2b(cp_hash) + tpm2b(policy_ref) + I32.build(expiration)
    return build_command(CC["PolicySecret"], [auth_handle, session], params, auth=pw_session(password))


def policy_duplication_select(session: int, object_name: bytes, parent_name: bytes, include: int) -> bytes:
    return build_command(CC["PolicyDuplicationSelect"], [session],
                         tpm2b(object_name) + tpm2b(parent_name) + u8(include))



# ----------------------------------------------------------------------------- connections

NoResponse = TransportError  # the server closed the connection or sent nothing in time instead of a response


class ServerError(RuntimeError):
    """A TPM server did not start, or refused a command that prepares a measurement."""


class TpmConnection(SocketTransport):
    """A persistent TCP connection to a TPM data port: one response per command."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 10.0) -> None:
        super().__init__(SocketTransport.tcp(port, host, timeout).sock)


# ----------------------------------------------------------------------------- control channel

def ctrl_set_locality(server: TpmServer, locality: int, timeout: float = 5.0) -> int:
    """swtpm control channel (port P+1) CMD_SET_LOCALITY; returns its TPM 1.2-style result code."""
    return SwtpmControl(port=server.port + 1, timeout=timeout).set_locality(locality)


# ----------------------------------------------------------------------------- latency measurements

LATENCY_NV_INDEX = 0x01000200
LATENCY_NV_ATTRIBUTES = TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA


def latency_commands() -> dict[str, tuple[bytes, ...]]:
    """The commands whose round-trip latency is measured, as the variants sent in turn.

    NV_Write alternates two different payloads so that every write changes the
    index: libtpms skips the NV store when the new data equals the stored data.
    The second PCR_Extend row sends 64 different digests in turn, as a measuring
    guest does: more than the engine keeps parsed (``vtpm.engine.PARSED_ENTRIES``),
    so every one of them is parsed anew (the first row measures a repeated command).
    """
    return {
        "GetRandom(16)": (get_random(16),),
        "PCR_Read(sha256, PCR 16)": (pcr_read([(TPM_ALG_SHA256, [16])]),),
        "PCR_Extend(sha256, PCR 16)": (pcr_extend(16, [(TPM_ALG_SHA256, bytes(range(32)))]),),
        "PCR_Extend(new digest each)": tuple(pcr_extend(16, [(TPM_ALG_SHA256, bytes([n]) * 32)]) for n in range(64)),
        "NV_Read(32 B)": (nv_read(LATENCY_NV_INDEX, 32, auth_handle=TPM_RH_OWNER),),
        "NV_Write(32 B)": tuple(nv_write(LATENCY_NV_INDEX, bytes([fill]) * 32, auth_handle=TPM_RH_OWNER)
                                for fill in (0x5A, 0xA5)),
    }


def command_sender(conn: TpmConnection, variants: tuple[bytes, ...]):
    """A zero-argument callable sending the next variant in turn and returning its response."""
    next_command = itertools.cycle(variants).__next__
    transact = conn.transact

    def send() -> bytes:
        return transact(next_command())

    return send


def prepare_latency_target(conn: TpmConnection) -> None:
    """Define the owner NV index that NV_Write goes to (32 bytes, owner password session); try every command."""
    response = conn.transact(nv_define_space(LATENCY_NV_INDEX, LATENCY_NV_ATTRIBUTES, 32))
    if response_code(response) not in (0x000, 0x14C):  # success or TPM_RC_NV_DEFINED
        raise ServerError(f"NV_DefineSpace for the latency index failed: {describe_rc(response_code(response))}")
    for name, variants in sorted(latency_commands().items(), key=lambda item: not item[0].startswith("NV_Write")):
        for command in variants:  # NV_Write first: NV_Read needs the index written
            rc = response_code(conn.transact(command))
            if rc != 0:
                raise ServerError(f"{name} failed: {describe_rc(rc)}")


def started_client() -> TpmClient:
    """A fresh in-process TPM after Startup(CLEAR), behind the same client API the sockets use."""
    tpm = Tpm()
    tpm.execute(0, wire.STARTUP_CLEAR)
    return TpmClient(tpm)


def check_served_on(port: int, data_unix: str | os.PathLike[str]) -> None:
    """A powered-on vTPM answers on both endpoints it was given: Startup and GetRandom over the Unix data
    socket, GetRandom over the TCP data port (the same TPM: no second Startup)."""
    with TpmClient.swtpm_unix(os.fspath(data_unix)) as client:
        client.startup()
        assert len(client.get_random(8)) == 8
    with TpmClient.swtpm_tcp(port) as client:
        assert len(client.get_random(8)) == 8
