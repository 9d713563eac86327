"""TPM 2.0 policy arithmetic written out from the spec (Part 1 19.7, Part 3 23), independently of the engine.

Every policy digest, NV name, cpHash and session HMAC the policy tests expect is
computed here with hashlib/hmac from the formulas, never with the engine's code;
the in-process tests and the tests against swtpm share them.
"""

from __future__ import annotations

import hashlib
import hmac

from support.tpm_helpers import (
    CC,
    TPM_ALG_SHA1,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    TPMA_NV_AUTHWRITE,
    TPMA_NV_NO_DA,
    TPMA_NV_POLICYREAD,
    TPMA_NV_WRITTEN,
    nv_public,
    tpm2b,
    u8,
    u16,
    u32,
)

HASH = {TPM_ALG_SHA1: "sha1", TPM_ALG_SHA256: "sha256", TPM_ALG_SHA384: "sha384"}
SIZE = {TPM_ALG_SHA1: 20, TPM_ALG_SHA256: 32, TPM_ALG_SHA384: 48}
CONTINUE = 0x01
EO_EQ, EO_UNSIGNED_GT, EO_UNSIGNED_GE = 0x0000, 0x0003, 0x0007
TPM_ST_AUTH_SECRET = 0x8023

# response codes: base | 0x40 (parameter) or 0x800 (session), number << 8
RC_VALUE_P1, RC_VALUE_P2, RC_VALUE_H1 = 0x1C4, 0x2C4, 0x184
RC_SIZE_P1, RC_RANGE_P1, RC_RANGE = 0x1D5, 0x1CD, 0x08D
RC_POLICY_CC_P1, RC_NONCE_P1, RC_EXPIRED_P4 = 0x1E4, 0x1CF, 0x4E3
RC_POLICY, RC_CPHASH, RC_COMMAND_CODE, RC_PCR_CHANGED = 0x126, 0x151, 0x143, 0x128
RC_POLICY_FAIL_S1, RC_POLICY_CC_S1, RC_EXPIRED_S1 = 0x99D, 0x9A4, 0x9A3
RC_ATTRIBUTES_S1, RC_BAD_AUTH_S1, RC_MODE_S1 = 0x982, 0x9A2, 0x989
RC_LOCALITY, RC_REFERENCE_H0, RC_NV_UNINITIALIZED = 0x907, 0x910, 0x14A


# ----------------------------------------------------------------------------- the spec, independently


def H(alg: int, *parts: bytes) -> bytes:
    return hashlib.new(HASH[alg], b"".join(parts)).digest()


def step(alg: int, old: bytes, command: str, *args: bytes) -> bytes:
    """policyDigest_new = H(policyDigest_old || TPM_CC || args)."""
    return H(alg, old, u32(CC[command]), *args)


def zeros(alg: int = TPM_ALG_SHA256) -> bytes:
    return bytes(SIZE[alg])


def nv_name(index: int, attributes: int, size: int, policy: bytes = b"", written: bool = False) -> bytes:
    """nameAlg || H(TPMS_NV_PUBLIC), with TPMA_NV_WRITTEN once the index has data."""
    public = nv_public(index, attributes | (TPMA_NV_WRITTEN if written else 0), size, TPM_ALG_SHA256, policy)
    return u16(TPM_ALG_SHA256) + H(TPM_ALG_SHA256, public)


def pcr_values_digest(alg: int, values: list[bytes]) -> bytes:
    return H(alg, *values)


def extended(bank_alg: int, old: bytes, data: bytes) -> bytes:
    return H(bank_alg, old, data)


def cp_hash(alg: int, command: str, names: list[bytes], params: bytes) -> bytes:
    return H(alg, u32(CC[command]), *names, params)


def session_hmac(alg: int, key: bytes, p_hash: bytes, newer: bytes, older: bytes, attributes: int) -> bytes:
    return hmac.new(key, p_hash + newer + older + bytes([attributes]), HASH[alg]).digest()


def auth_command(handle: int, nonce_caller: bytes, mac: bytes, attributes: int = CONTINUE) -> bytes:
    """One TPMS_AUTH_COMMAND."""
    return u32(handle) + tpm2b(nonce_caller) + u8(attributes) + tpm2b(mac)


def split_response(response: bytes) -> tuple[bytes, bytes, int, bytes]:
    """(parameters, nonceTPM, attributes, hmac) of a response with sessions."""
    size = int.from_bytes(response[10:14], "big")
    params, area = response[14 : 14 + size], response[14 + size :]
    nonce_size = int.from_bytes(area[:2], "big")
    nonce = area[2 : 2 + nonce_size]
    attributes = area[2 + nonce_size]
    mac = area[5 + nonce_size :]
    return params, nonce, attributes, mac

POLICY_INDEX = 0x01500010
POLICY_ATTRS = TPMA_NV_POLICYREAD | TPMA_NV_AUTHWRITE | TPMA_NV_NO_DA
SECRET = b"nv-secret"
DATA = b"policy-protected"
