"""Raw TPM 2.0 over TCP: build commands, send them, read responses (servers: support.servers).

Commands are built byte by byte from the layouts in TPM 2.0 Part 3 (header,
handle area, authorization area, parameters) so that both TPMs see exactly
the same bytes. Only loopback addresses are used.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from support.servers import TpmServer

HOST = "127.0.0.1"

# ----------------------------------------------------------------------------- constants (Part 2)

TPM_ST_NO_SESSIONS = 0x8001
TPM_ST_SESSIONS = 0x8002

TPM_SU_CLEAR = 0x0000
TPM_SU_STATE = 0x0001

TPM_RH_OWNER = 0x40000001
TPM_RH_NULL = 0x40000007
TPM_RS_PW = 0x40000009
TPM_RH_ENDORSEMENT = 0x4000000B
TPM_RH_PLATFORM = 0x4000000C

TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_NULL = 0x0010
TPM_ALG_SM3_256 = 0x0012
DIGEST_SIZES = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48, TPM_ALG_SHA512: 64}
HASH_NAMES = {TPM_ALG_SHA1: "sha1", TPM_ALG_SHA256: "sha256", TPM_ALG_SHA384: "sha384", TPM_ALG_SHA512: "sha512"}

TPM_CAP_ALGS = 0x00000000
TPM_CAP_HANDLES = 0x00000001
TPM_CAP_COMMANDS = 0x00000002
TPM_CAP_PCRS = 0x00000005
TPM_CAP_TPM_PROPERTIES = 0x00000006
TPM_CAP_PCR_PROPERTIES = 0x00000007

TPMA_SESSION_CONTINUE = 0x01

# TPMA_NV bits
TPMA_NV_PPWRITE = 0x00000001
TPMA_NV_OWNERWRITE = 0x00000002
TPMA_NV_AUTHWRITE = 0x00000004
TPMA_NV_POLICYWRITE = 0x00000008
TPM_NT_ORDINARY = 0x0 << 4
TPM_NT_COUNTER = 0x1 << 4
TPM_NT_BITS = 0x2 << 4
TPM_NT_EXTEND = 0x4 << 4
TPMA_NV_WRITEALL = 0x00001000
TPMA_NV_PPREAD = 0x00010000
TPMA_NV_OWNERREAD = 0x00020000
TPMA_NV_AUTHREAD = 0x00040000
TPMA_NV_NO_DA = 0x02000000
TPMA_NV_ORDERLY = 0x04000000
TPMA_NV_WRITTEN = 0x20000000

CC = {
    "NV_UndefineSpace": 0x00000122,
    "NV_DefineSpace": 0x0000012A,
    "PCR_Allocate": 0x0000012B,
    "Startup": 0x00000144,
    "Shutdown": 0x00000145,
    "NV_Read": 0x0000014E,
    "NV_ReadPublic": 0x00000169,
    "NV_Write": 0x00000137,
    "NV_Increment": 0x00000134,
    "NV_SetBits": 0x00000135,
    "NV_Extend": 0x00000136,
    "PCR_Extend": 0x00000182,
    "PCR_Reset": 0x0000013D,
    "PCR_Read": 0x0000017E,
    "GetCapability": 0x0000017A,
    "GetRandom": 0x0000017B,
    "Hash": 0x0000017D,
    "StartAuthSession": 0x00000176,
    "FlushContext": 0x00000165,
    "NV_ChangeAuth": 0x0000013B,
    "PCR_SetAuthPolicy": 0x0000012C,
    "PolicyNV": 0x00000149,
    "PolicySecret": 0x00000151,
    "PolicyAuthValue": 0x0000016B,
    "PolicyCommandCode": 0x0000016C,
    "PolicyCounterTimer": 0x0000016D,
    "PolicyCpHash": 0x0000016E,
    "PolicyLocality": 0x0000016F,
    "PolicyNameHash": 0x00000170,
    "PolicyOR": 0x00000171,
    "PolicyPCR": 0x0000017F,
    "PolicyRestart": 0x00000180,
    "PolicyDuplicationSelect": 0x00000188,
    "PolicyGetDigest": 0x00000189,
    "PolicyPassword": 0x0000018C,
    "PolicyNvWritten": 0x0000018F,
}

# Response codes (Part 2, 6.6; values as in libtpms TpmTypes.h), for readable messages only
RC_NAMES = {
    0x000: "TPM_RC_SUCCESS", 0x01E: "TPM_RC_BAD_TAG", 0x100: "TPM_RC_INITIALIZE", 0x101: "TPM_RC_FAILURE",
    0x103: "TPM_RC_SEQUENCE", 0x10B: "TPM_RC_PRIVATE", 0x119: "TPM_RC_HMAC", 0x120: "TPM_RC_DISABLED",
    0x121: "TPM_RC_EXCLUSIVE", 0x124: "TPM_RC_AUTH_TYPE", 0x125: "TPM_RC_AUTH_MISSING", 0x126: "TPM_RC_POLICY",
    0x127: "TPM_RC_PCR", 0x128: "TPM_RC_PCR_CHANGED", 0x12D: "TPM_RC_UPGRADE", 0x12E: "TPM_RC_TOO_MANY_CONTEXTS",
    0x12F: "TPM_RC_AUTH_UNAVAILABLE", 0x130: "TPM_RC_REBOOT", 0x131: "TPM_RC_UNBALANCED",
    0x142: "TPM_RC_COMMAND_SIZE", 0x143: "TPM_RC_COMMAND_CODE", 0x144: "TPM_RC_AUTHSIZE",
    0x145: "TPM_RC_AUTH_CONTEXT", 0x146: "TPM_RC_NV_RANGE", 0x147: "TPM_RC_NV_SIZE", 0x148: "TPM_RC_NV_LOCKED",
    0x149: "TPM_RC_NV_AUTHORIZATION", 0x14A: "TPM_RC_NV_UNINITIALIZED", 0x14B: "TPM_RC_NV_SPACE",
    0x14C: "TPM_RC_NV_DEFINED", 0x150: "TPM_RC_BAD_CONTEXT", 0x151: "TPM_RC_CPHASH", 0x152: "TPM_RC_PARENT",
    0x153: "TPM_RC_NEEDS_TEST", 0x154: "TPM_RC_NO_RESULT", 0x155: "TPM_RC_SENSITIVE", 0x081: "TPM_RC_ASYMMETRIC",
    0x082: "TPM_RC_ATTRIBUTES", 0x083: "TPM_RC_HASH", 0x084: "TPM_RC_VALUE", 0x085: "TPM_RC_HIERARCHY",
    0x087: "TPM_RC_KEY_SIZE", 0x088: "TPM_RC_MGF", 0x089: "TPM_RC_MODE", 0x08A: "TPM_RC_TYPE",
    0x08B: "TPM_RC_HANDLE", 0x08C: "TPM_RC_KDF", 0x08D: "TPM_RC_RANGE", 0x08E: "TPM_RC_AUTH_FAIL",
    0x08F: "TPM_RC_NONCE", 0x090: "TPM_RC_PP", 0x092: "TPM_RC_SCHEME", 0x095: "TPM_RC_SIZE",
    0x096: "TPM_RC_SYMMETRIC", 0x097: "TPM_RC_TAG", 0x098: "TPM_RC_SELECTOR", 0x09A: "TPM_RC_INSUFFICIENT",
    0x09B: "TPM_RC_SIGNATURE", 0x09C: "TPM_RC_KEY", 0x09D: "TPM_RC_POLICY_FAIL", 0x09F: "TPM_RC_INTEGRITY",
    0x0A0: "TPM_RC_TICKET", 0x0A1: "TPM_RC_RESERVED_BITS", 0x0A2: "TPM_RC_BAD_AUTH", 0x0A3: "TPM_RC_EXPIRED",
    0x0A4: "TPM_RC_POLICY_CC", 0x0A5: "TPM_RC_BINDING", 0x0A6: "TPM_RC_CURVE", 0x0A7: "TPM_RC_ECC_POINT",
    0x901: "TPM_RC_CONTEXT_GAP", 0x902: "TPM_RC_OBJECT_MEMORY", 0x903: "TPM_RC_SESSION_MEMORY",
    0x904: "TPM_RC_MEMORY", 0x905: "TPM_RC_SESSION_HANDLES", 0x906: "TPM_RC_OBJECT_HANDLES",
    0x907: "TPM_RC_LOCALITY", 0x908: "TPM_RC_YIELDED", 0x909: "TPM_RC_CANCELED", 0x90A: "TPM_RC_TESTING",
    0x920: "TPM_RC_NV_RATE", 0x921: "TPM_RC_LOCKOUT", 0x922: "TPM_RC_RETRY", 0x923: "TPM_RC_NV_UNAVAILABLE",
}


def describe_rc(rc: int) -> str:
    """A response code as text: base name plus the handle/parameter/session it names."""
    if rc == 0:
        return "TPM_RC_SUCCESS"
    if rc & 0x80:  # format 1: bits 8-11 number, bit 6 parameter, bit 11 session
        base = 0x080 | (rc & 0x3F)
        number = (rc >> 8) & 0xF
        if rc & 0x40:
            where = f" parameter {number}"
        elif number & 0x8:
            where = f" session {number & 0x7}"
        elif number:
            where = f" handle {number}"
        else:
            where = ""
        return f"{RC_NAMES.get(base, hex(base))}{where}"
    return RC_NAMES.get(rc, f"0x{rc:03x}")


# ----------------------------------------------------------------------------- marshalling


def u8(value: int) -> bytes:
    return struct.pack(">B", value)


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def tpm2b(data: bytes) -> bytes:
    return u16(len(data)) + data


def build_command(code: int, handles: tuple[int, ...] | list[int] = (), params: bytes = b"",
                  auth: bytes | None = None, tag: int | None = None) -> bytes:
    """A command: header, handle area, optional authorization area (with its size), parameters."""
    body = b"".join(u32(h) for h in handles)
    if auth is not None:
        body += u32(len(auth)) + auth
    if tag is None:
        tag = TPM_ST_SESSIONS if auth is not None else TPM_ST_NO_SESSIONS
    body += params
    return u16(tag) + u32(10 + len(body)) + u32(code) + body


def pw_session(password: bytes = b"", attributes: int = TPMA_SESSION_CONTINUE) -> bytes:
    """One TPMS_AUTH_COMMAND for the password session TPM_RS_PW."""
    return u32(TPM_RS_PW) + tpm2b(b"") + u8(attributes) + tpm2b(password)


def pcr_select(pcrs: list[int] | range, size_of_select: int = 3) -> bytes:
    bits = bytearray(size_of_select)
    for pcr in pcrs:
        bits[pcr // 8] |= 1 << (pcr % 8)
    return u8(size_of_select) + bytes(bits)


def tpml_pcr_selection(selections: list[tuple[int, list[int] | range]], size_of_select: int = 3) -> bytes:
    return u32(len(selections)) + b"".join(u16(alg) + pcr_select(pcrs, size_of_select) for alg, pcrs in selections)


def startup(su: int = TPM_SU_CLEAR) -> bytes:
    return build_command(CC["Startup"], params=u16(su))


def get_random(count: int) -> bytes:
    return build_command(CC["GetRandom"], params=u16(count))


def pcr_read(selections: list[tuple[int, list[int] | range]], size_of_select: int = 3) -> bytes:
    return build_command(CC["PCR_Read"], params=tpml_pcr_selection(selections, size_of_select))


def pcr_extend(pcr: int, digests: list[tuple[int, bytes]], password: bytes = b"",
               attributes: int = TPMA_SESSION_CONTINUE) -> bytes:
    values = u32(len(digests)) + b"".join(u16(alg) + value for alg, value in digests)
    return build_command(CC["PCR_Extend"], [pcr], values, auth=pw_session(password, attributes))


def pcr_reset(pcr: int, password: bytes = b"") -> bytes:
    return build_command(CC["PCR_Reset"], [pcr], auth=pw_session(password))


def get_capability(capability: int, prop: int, count: int) -> bytes:
    return build_command(CC["GetCapability"], params=u32(capability) + u32(prop) + u32(count))


def hash_command(data: bytes, alg: int, hierarchy: int = TPM_RH_NULL) -> bytes:
    return build_command(CC["Hash"], params=tpm2b(data) + u16(alg) + u32(hierarchy))


def nv_public(index: int, attributes: int, size: int, name_alg: int = TPM_ALG_SHA256, policy: bytes = b"") -> bytes:
    """TPMS_NV_PUBLIC (without the TPM2B size)."""
    return u32(index) + u16(name_alg) + u32(attributes) + tpm2b(policy) + u16(size)


def nv_define_space(index: int, attributes: int, size: int, *, auth: bytes = b"", name_alg: int = TPM_ALG_SHA256,
                    policy: bytes = b"", auth_handle: int = TPM_RH_OWNER, password: bytes = b"") -> bytes:
    params = tpm2b(auth) + tpm2b(nv_public(index, attributes, size, name_alg, policy))
    return build_command(CC["NV_DefineSpace"], [auth_handle], params, auth=pw_session(password))


def nv_undefine_space(index: int, auth_handle: int = TPM_RH_OWNER, password: bytes = b"") -> bytes:
    return build_command(CC["NV_UndefineSpace"], [auth_handle, index], auth=pw_session(password))


def nv_read_public(index: int) -> bytes:
    return build_command(CC["NV_ReadPublic"], [index])


def nv_write(index: int, data: bytes, offset: int = 0, *, auth_handle: int | None = None,
             password: bytes = b"") -> bytes:
    return build_command(CC["NV_Write"], [auth_handle or index, index], tpm2b(data) + u16(offset),
                         auth=pw_session(password))


def nv_read(index: int, size: int, offset: int = 0, *, auth_handle: int | None = None,
            password: bytes = b"") -> bytes:
    return build_command(CC["NV_Read"], [auth_handle or index, index], u16(size) + u16(offset),
                         auth=pw_session(password))


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
TPMA_NV_POLICYREAD = 0x00080000


def start_auth_session(session_type: int, auth_hash: int = TPM_ALG_SHA256, nonce_caller: bytes = bytes(range(16)),
                       bind: int = TPM_RH_NULL) -> bytes:
    """StartAuthSession: unsalted, no parameter encryption (symmetric TPM_ALG_NULL)."""
    params = tpm2b(nonce_caller) + tpm2b(b"") + u8(session_type) + u16(TPM_ALG_NULL) + u16(auth_hash)
    return build_command(CC["StartAuthSession"], [TPM_RH_NULL, bind], params)


def session_from_response(response: bytes) -> tuple[int, bytes]:
    """(sessionHandle, nonceTPM) from a StartAuthSession response."""
    size = int.from_bytes(response[14:16], "big")
    return int.from_bytes(response[10:14], "big"), response[16 : 16 + size]


def flush_context(handle: int) -> bytes:
    return build_command(CC["FlushContext"], params=u32(handle))


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
    params = tpm2b(nonce_tpm) + tpm2b(cp_hash) + tpm2b(policy_ref) + struct.pack(">i", expiration)
    return build_command(CC["PolicySecret"], [auth_handle, session], params, auth=pw_session(password))


def policy_duplication_select(session: int, object_name: bytes, parent_name: bytes, include: int) -> bytes:
    return build_command(CC["PolicyDuplicationSelect"], [session],
                         tpm2b(object_name) + tpm2b(parent_name) + u8(include))


def response_code(response: bytes) -> int:
    return int.from_bytes(response[6:10], "big") if len(response) >= 10 else -1


# ----------------------------------------------------------------------------- connections


class NoResponse(Exception):
    """The server closed the connection or sent nothing in time instead of a response."""


class ServerError(RuntimeError):
    """A TPM server did not start, or refused a command that prepares a measurement."""


class TpmConnection:
    """A persistent TCP connection to a TPM data port: one response per command."""

    def __init__(self, port: int, host: str = HOST, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _recv_exact(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            try:
                chunk = self.sock.recv(left)
            except TimeoutError:
                raise NoResponse("no response before the timeout") from None
            except OSError as exc:
                raise NoResponse(f"connection error: {exc}") from None
            if not chunk:
                raise NoResponse("connection closed by the server")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def transact(self, command: bytes) -> bytes:
        try:
            self.sock.sendall(command)
        except OSError as exc:
            raise NoResponse(f"send failed: {exc}") from None
        header = self._recv_exact(10)
        size = int.from_bytes(header[2:6], "big")
        if size < 10:
            raise NoResponse(f"malformed response header {header.hex()}")
        return header + self._recv_exact(size - 10)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ----------------------------------------------------------------------------- control channel

CTRL_SET_LOCALITY = 0x05


def ctrl_set_locality(server: TpmServer, locality: int, timeout: float = 5.0) -> int:
    """swtpm control channel (port P+1) CMD_SET_LOCALITY; returns its TPM 1.2-style result code."""
    with socket.create_connection((HOST, server.port + 1), timeout=timeout) as sock:
        sock.sendall(u32(CTRL_SET_LOCALITY) + u8(locality))
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                raise NoResponse(f"{server.name}: control channel closed before answering SET_LOCALITY")
            answer += chunk
    return int.from_bytes(answer, "big")


# ----------------------------------------------------------------------------- latency measurements

LATENCY_NV_INDEX = 0x01000200
LATENCY_NV_ATTRIBUTES = TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_AUTHWRITE | TPMA_NV_AUTHREAD | TPMA_NV_NO_DA


def latency_commands() -> dict[str, tuple[bytes, ...]]:
    """The commands whose round-trip latency is measured, as the variants sent in turn.

    NV_Write alternates two different payloads so that every write changes the
    index: libtpms skips the NV store when the new data equals the stored data.
    """
    return {
        "GetRandom(16)": (get_random(16),),
        "PCR_Extend(sha256, PCR 16)": (pcr_extend(16, [(TPM_ALG_SHA256, bytes(range(32)))]),),
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
    for name, variants in latency_commands().items():
        for command in variants:
            rc = response_code(conn.transact(command))
            if rc != 0:
                raise ServerError(f"{name} failed: {describe_rc(rc)}")
