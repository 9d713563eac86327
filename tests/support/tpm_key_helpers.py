"""Raw TPM 2.0 key commands for latency measurements: templates, CreatePrimary, Create, Load, Sign, Quote.

Builds on support/tpm_helpers.py (header, handle and authorization areas) and
uses the TPMT_PUBLIC definition of vtpm/marshal/objects.py to lay out the
templates, so that our vTPM and swtpm see exactly the same bytes.

The measured operations, each over one persistent connection per server:

- CreatePrimary of an ECC NIST P-256 storage key in the owner hierarchy
  (password session); the FlushContext of the new handle is sent separately
- CreatePrimary of an RSA 2048 storage key with the same attributes, "cold"
  (the ``unique`` field of the template differs on every call, so every call
  derives a key that this TPM has not derived before) and "repeated" (the
  identical template every time)
- Sign of a 32-byte digest with a loaded, unrestricted ECC P-256
  ECDSA-SHA256 key and a NULL hashcheck ticket
- Quote of PCRs sha256:0-7 with a loaded, restricted RSA 2048
  RSASSA-SHA256 key
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from support.tpm_helpers import (
    TPM_ALG_NULL,
    TPM_ALG_SHA256,
    TPM_RH_NULL,
    TPM_RH_OWNER,
    TpmConnection,
    build_command,
    describe_rc,
    flush_context,
    pw_session,
    response_code,
    tpm2b,
    tpml_pcr_selection,
    u16,
    u32,
)

from vtpm import wire
from vtpm.marshal.objects import TPMT_PUBLIC

# ----------------------------------------------------------------------------- constants (Part 2)

KEY_CC = {
    "CreatePrimary": 0x00000131,
    "Create": 0x00000153,
    "Load": 0x00000157,
    "Quote": 0x00000158,
    "Sign": 0x0000015D,
    "FlushContext": 0x00000165,
}

TPM_ALG_RSA = 0x0001
TPM_ALG_AES = 0x0006
TPM_ALG_RSASSA = 0x0014
TPM_ALG_ECDSA = 0x0018
TPM_ALG_ECC = 0x0023
TPM_ALG_CFB = 0x0043
TPM_ECC_NIST_P256 = 0x0003
TPM_ST_HASHCHECK = 0x8024

# TPMA_OBJECT bits
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN_ENCRYPT = 1 << 18

KEY_BASE = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH
STORAGE_ATTRIBUTES = KEY_BASE | RESTRICTED | DECRYPT
SIGNING_ATTRIBUTES = KEY_BASE | SIGN_ENCRYPT
RESTRICTED_SIGNING_ATTRIBUTES = KEY_BASE | SIGN_ENCRYPT | RESTRICTED

AES_128_CFB = {"algorithm": TPM_ALG_AES, "keyBits": 128, "mode": TPM_ALG_CFB}
SYM_NULL = {"algorithm": TPM_ALG_NULL, "keyBits": None, "mode": None}
SCHEME_NULL = {"scheme": TPM_ALG_NULL, "details": None}
QUOTE_PCRS = [(TPM_ALG_SHA256, range(8))]

# ----------------------------------------------------------------------------- templates (TPMT_PUBLIC)


def ecc_template(attributes: int, symmetric: dict, scheme: dict, unique_x: bytes = b"",
                 unique_y: bytes = b"") -> bytes:
    """An ECC NIST P-256 key, nameAlg SHA-256, empty authPolicy, KDF NULL."""
    return TPMT_PUBLIC.build({
        "type": TPM_ALG_ECC,
        "nameAlg": TPM_ALG_SHA256,
        "objectAttributes": attributes,
        "authPolicy": b"",
        "parameters": {"symmetric": symmetric, "scheme": scheme, "curveID": TPM_ECC_NIST_P256,
                       "kdf": {"scheme": TPM_ALG_NULL, "details": None}},
        "unique": {"x": unique_x, "y": unique_y},
    })


def rsa_template(attributes: int, symmetric: dict, scheme: dict, unique: bytes = b"", key_bits: int = 2048) -> bytes:
    """An RSA key, nameAlg SHA-256, empty authPolicy, default exponent (0 = 65537)."""
    return TPMT_PUBLIC.build({
        "type": TPM_ALG_RSA,
        "nameAlg": TPM_ALG_SHA256,
        "objectAttributes": attributes,
        "authPolicy": b"",
        "parameters": {"symmetric": symmetric, "scheme": scheme, "keyBits": key_bits, "exponent": 0},
        "unique": unique,
    })


def ecc_storage_template(unique_x: bytes = b"") -> bytes:
    """restricted|decrypt|fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth, AES-128-CFB, NULL scheme."""
    return ecc_template(STORAGE_ATTRIBUTES, AES_128_CFB, SCHEME_NULL, unique_x)


def rsa_storage_template(unique: bytes = b"") -> bytes:
    """The RSA 2048 counterpart of ecc_storage_template."""
    return rsa_template(STORAGE_ATTRIBUTES, AES_128_CFB, SCHEME_NULL, unique)


def ecc_signing_template() -> bytes:
    """Unrestricted ECC P-256 signing key, ECDSA with SHA-256."""
    return ecc_template(SIGNING_ATTRIBUTES, SYM_NULL,
                        {"scheme": TPM_ALG_ECDSA, "details": {"hashAlg": TPM_ALG_SHA256}})


def rsa_restricted_signing_template() -> bytes:
    """Restricted RSA 2048 signing key (an attestation key), RSASSA with SHA-256."""
    return rsa_template(RESTRICTED_SIGNING_ATTRIBUTES, SYM_NULL,
                        {"scheme": TPM_ALG_RSASSA, "details": {"hashAlg": TPM_ALG_SHA256}})


# ----------------------------------------------------------------------------- commands (Part 3)

EMPTY_SENSITIVE_CREATE = tpm2b(tpm2b(b"") + tpm2b(b""))  # TPM2B_SENSITIVE_CREATE: no userAuth, no data


def create_primary(template: bytes, hierarchy: int = TPM_RH_OWNER, password: bytes = b"") -> bytes:
    """CreatePrimary with an empty userAuth, no outsideInfo and no creation PCRs."""
    return wire.create_primary(template, hierarchy, password=password)


def create(parent: int, template: bytes, password: bytes = b"") -> bytes:
    """Create an ordinary object under ``parent`` (parent auth by password session)."""
    params = EMPTY_SENSITIVE_CREATE + tpm2b(template) + tpm2b(b"") + u32(0)
    return build_command(KEY_CC["Create"], [parent], params, auth=pw_session(password))


def load(parent: int, private: bytes, public: bytes, password: bytes = b"") -> bytes:
    """Load: ``private`` and ``public`` are the TPM2B_PRIVATE and TPM2B_PUBLIC as Create returned them."""
    return build_command(KEY_CC["Load"], [parent], private + public, auth=pw_session(password))


def sign(key: int, digest: bytes, scheme: int = TPM_ALG_ECDSA, hash_alg: int = TPM_ALG_SHA256,
         password: bytes = b"") -> bytes:
    """Sign a digest with a NULL hashcheck ticket (fine for an unrestricted key)."""
    in_scheme = u16(scheme) + (u16(hash_alg) if scheme != TPM_ALG_NULL else b"")
    ticket = u16(TPM_ST_HASHCHECK) + u32(TPM_RH_NULL) + tpm2b(b"")
    return build_command(KEY_CC["Sign"], [key], tpm2b(digest) + in_scheme + ticket, auth=pw_session(password))


def quote(key: int, qualifying_data: bytes, selections=QUOTE_PCRS, password: bytes = b"") -> bytes:
    """Quote with the key's own scheme (inScheme TPM_ALG_NULL)."""
    params = tpm2b(qualifying_data) + u16(TPM_ALG_NULL) + tpml_pcr_selection(selections)
    return build_command(KEY_CC["Quote"], [key], params, auth=pw_session(password))


# ----------------------------------------------------------------------------- responses


class CommandFailed(AssertionError):
    """A TPM command answered with a response code other than TPM_RC_SUCCESS."""


def check(response: bytes, what: str) -> bytes:
    rc = response_code(response)
    if rc != 0:
        raise CommandFailed(f"{what}: {describe_rc(rc)} (0x{rc:03x}); response {response[:32].hex()}")
    return response


def out_handle(response: bytes) -> int:
    """The handle a CreatePrimary or Load response returns (right after the header)."""
    return int.from_bytes(response[10:14], "big")


def _tpm2b_at(data: bytes, offset: int) -> tuple[bytes, int]:
    """(the whole TPM2B including its size, offset after it)."""
    size = int.from_bytes(data[offset : offset + 2], "big")
    end = offset + 2 + size
    return data[offset:end], end


def create_outputs(response: bytes) -> tuple[bytes, bytes]:
    """(outPrivate, outPublic) of a Create response with sessions: both TPM2B, sizes included."""
    offset = 10 + 4  # header, parameterSize
    private, offset = _tpm2b_at(response, offset)
    public, _ = _tpm2b_at(response, offset)
    return private, public


def primary_public(response: bytes) -> bytes:
    """outPublic (TPM2B, size included) of a CreatePrimary response with sessions."""
    return _tpm2b_at(response, 10 + 4 + 4)[0]  # header, objectHandle, parameterSize


# ----------------------------------------------------------------------------- measurement targets


TPM_RC_RETRY = 0x922
TPM_RC_YIELDED = 0x908
TPM_RC_TESTING = 0x90A
RESUBMIT_CODES = (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING)


def transact_resubmitting(conn: TpmConnection, command: bytes, what: str, notes: list[str] | None = None,
                          attempts: int = 5) -> bytes:
    """Send ``command``; resubmit it (as a TSS would) while the TPM answers a warning that asks for that.

    swtpm (libtpms 0.9) answers TPM_RC_RETRY to the first Create after startup;
    the command did not run, and a TSS sends it again. Every resubmission is
    noted in ``notes``; the last response must be TPM_RC_SUCCESS.
    """
    for _ in range(attempts):
        response = conn.transact(command)
        rc = response_code(response)
        if rc not in RESUBMIT_CODES:
            return check(response, what)
        if notes is not None:
            notes.append(f"{what}: {describe_rc(rc)}, resubmitted")
    return check(response, what)


@dataclass
class KeyTargets:
    """Keys loaded on one server for the Sign and Quote measurements (their parent is flushed again)."""

    signer: int  # ECC P-256 ECDSA-SHA256 key (unrestricted)
    attester: int  # RSA 2048 RSASSA-SHA256 key (restricted)
    notes: list[str]  # resubmissions and other remarks from the setup


def prepare_key_targets(conn: TpmConnection) -> KeyTargets:
    """An ECC storage primary, an ECDSA signing key and an RSA attestation key loaded under it.

    The primary is flushed once both keys are loaded, so that of the three
    transient object slots (swtpm's and ours) one stays free for CreatePrimary.
    Every command is checked; a TPM_RC_RETRY is resubmitted and noted.
    """
    notes: list[str] = []
    parent = out_handle(transact_resubmitting(conn, create_primary(ecc_storage_template()),
                                              "CreatePrimary(ECC storage)", notes))
    handles = []
    for label, template in (("ECC signing key", ecc_signing_template()),
                            ("RSA attestation key", rsa_restricted_signing_template())):
        private, public = create_outputs(transact_resubmitting(conn, create(parent, template), f"Create({label})", notes))
        handles.append(out_handle(transact_resubmitting(conn, load(parent, private, public), f"Load({label})", notes)))
    transact_resubmitting(conn, flush_context(parent), "FlushContext(ECC storage primary)", notes)
    targets = KeyTargets(handles[0], handles[1], notes)
    transact_resubmitting(conn, sign(targets.signer, bytes(32)), "Sign(ECDSA-SHA256)", notes)
    transact_resubmitting(conn, quote(targets.attester, b"first"), "Quote(RSASSA-SHA256)", notes)
    return targets


def release_key_targets(conn: TpmConnection, targets: KeyTargets) -> None:
    for handle in (targets.signer, targets.attester):
        check(conn.transact(flush_context(handle)), f"FlushContext(0x{handle:08x})")


class UniqueSource:
    """Fresh ``unique`` values for cold RSA CreatePrimary: a random run tag plus a counter.

    One source can be shared by several servers (``next_for``): every server
    gets the same sequence of values, and no value repeats within a run.
    """

    def __init__(self) -> None:
        self.tag = os.urandom(8)
        self.counters: dict[str, itertools.count] = {}

    def next_for(self, server: str) -> bytes:
        counter = self.counters.setdefault(server, itertools.count())
        return self.tag + next(counter).to_bytes(8, "big")


def sign_sender(conn: TpmConnection, key: int, digest: bytes = bytes(range(32))):
    command = sign(key, digest)
    transact = conn.transact

    def send() -> bytes:
        return check(transact(command), "Sign(ECDSA-SHA256)")

    return send


def quote_sender(conn: TpmConnection, key: int, qualifying_data: bytes = b"vtpm-bench-nonce"):
    command = quote(key, qualifying_data)
    transact = conn.transact

    def send() -> bytes:
        return check(transact(command), "Quote(RSASSA-SHA256, sha256:0-7)")

    return send
