"""Authorization sessions (Part 1, section 19): HMAC, policy and trial sessions.

Session keys, command/response HMACs and parameter encryption (AES-CFB and
XOR obfuscation) follow Part 1 exactly, so TSS stacks (tpm2-tss ESAPI) can
use them unmodified. The engine calls into this module; command handlers
never see sessions.
"""

from __future__ import annotations

import hmac as hmac_mod
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 keeps CFB among the "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from vtpm.constants import ALG, HT, RC, TPMA_SESSION
from vtpm.crypto import HASHES, digest, hmac_digest, kdfa
from vtpm.errors import TpmError

MAX_ACTIVE_SESSIONS = 64
MAX_LOADED_SESSIONS = 3  # as libtpms: a client without a resource manager flushes or saves sessions


class SessionType:
    """The TPM_SE session types StartAuthSession accepts (HMAC, policy, trial policy)."""
    HMAC = 0x00
    POLICY = 0x01
    TRIAL = 0x03


@dataclass
class SymDef:
    """The TPMT_SYM_DEF a session uses for parameter encryption (TPM_ALG_NULL: none)."""
    algorithm: int = ALG.NULL
    key_bits: int = 0
    mode: int = ALG.NULL  # for XOR: the hash algorithm


@dataclass
class AuthSession:
    """An HMAC or policy session held by the TPM."""

    handle: int
    session_type: int
    auth_hash: int
    session_key: bytes = field(repr=False)
    nonce_tpm: bytes
    symmetric: SymDef
    bound_entity: bytes = b""  # name+authValue digest of the bind entity, b"" when unbound
    policy_digest: bytes = b""
    # policy-session flags (set by policy commands)
    needs_auth_value: bool = False
    needs_password: bool = False
    command_code: int | None = None
    cp_hash: bytes | None = None
    name_hash: bytes | None = None
    locality: int | None = None
    is_trial: bool = False
    nonce_caller: bytes = b""
    start_nonce_tpm: bytes = b""
    expiration_ms: int | None = None
    pcr_counter: int | None = None
    nv_written: bool | None = None  # PolicyNvWritten: the WRITTEN state the authorized index must have
    start_ms: int = 0  # TPM time at StartAuthSession: PolicySecret expirations given with nonceTPM count from it
    template_hash: bytes | None = None  # PolicyTemplate: the digest the created object's template must have
    pp_required: bool = False  # PolicyPhysicalPresence: the command needs physical presence
    # Session audit (Part 1 19.6.10): an HMAC session used with the audit attribute keeps a digest of
    # cpHash || rpHash of every command it audited.
    is_audit: bool = False
    audit_digest: bytes = b""

    @property
    def is_policy(self) -> bool:
        """Whether this is a policy or trial session (not an HMAC session)."""
        return self.session_type in (SessionType.POLICY, SessionType.TRIAL)

    def reset_policy(self) -> None:
        """Back to the state after StartAuthSession: a zero policy digest and no recorded assertion (PolicyRestart, and
        a policy session after a use without continueSession)."""
        self.policy_digest = bytes(HASHES[self.auth_hash].size)
        self.needs_auth_value = self.needs_password = False
        self.command_code = self.cp_hash = self.name_hash = self.locality = None
        self.expiration_ms = self.pcr_counter = self.nv_written = None
        self.template_hash = None
        self.pp_required = False

    def held_hash(self) -> bytes | None:
        """What the session holds in the reference implementation's cpHash slot: a cpHash, a name
        hash or a template hash (only one of them at a time)."""
        for value in (self.cp_hash, self.name_hash, self.template_hash):
            if value is not None:
                return value
        return None

    def start_audit(self) -> None:
        """First use as an audit session, or auditReset: a zero digest, and no longer bound."""
        self.is_audit = True
        self.bound_entity = b""
        self.audit_digest = bytes(HASHES[self.auth_hash].size)

    def extend_audit(self, cp: bytes, rp: bytes) -> None:
        """Extend the session's audit digest with one command's cpHash and rpHash."""
        self.audit_digest = digest(self.auth_hash, self.audit_digest, cp, rp)


def bind_value(name: bytes, auth_value: bytes) -> bytes:
    """What a bound session remembers about its entity (a digest; never the auth value itself)."""
    return digest(ALG.SHA256, b"bind", name, auth_value.rstrip(b"\x00"))


def session_key(auth_hash: int, bind_auth: bytes, salt: bytes, nonce_tpm: bytes, nonce_caller: bytes,
                *, bound_or_salted: bool) -> bytes:
    """sessionKey = KDFa(authHash, bind.authValue || salt, "ATH", nonceTPM, nonceCaller, digest bits).

    Only a session with neither a bind entity nor a salt key has an empty sessionKey
    (Part 1 19.6.8); a bound session with an empty authValue still derives one.
    """
    if not bound_or_salted:
        return b""
    return kdfa(auth_hash, bind_auth + salt, b"ATH", nonce_tpm, nonce_caller, HASHES[auth_hash].size * 8)


def cp_hash(alg: int, command_code: int, names: list[bytes], params: bytes) -> bytes:
    """cpHash: H(commandCode || Names of the handles || parameters)."""
    return digest(alg, command_code.to_bytes(4, "big"), *names, params)


def rp_hash(alg: int, command_code: int, params: bytes) -> bytes:
    """rpHash: H(responseCode (0) || commandCode || parameters)."""
    return digest(alg, (0).to_bytes(4, "big"), command_code.to_bytes(4, "big"), params)


def session_hmac(session: AuthSession, auth_value: bytes, p_hash: bytes, nonce_newer: bytes, nonce_older: bytes,
                 extra_nonces: bytes, attributes: int, caller_hmac_empty: bool) -> bytes:
    """The session HMAC of Part 1 19.6.5.

    With an empty key and an empty HMAC from the caller the HMAC is empty, as
    the reference implementation and libtpms do; otherwise it is computed.
    """
    key = session.session_key + auth_value
    if not key and caller_hmac_empty:
        return b""
    return hmac_digest(session.auth_hash, key, p_hash, nonce_newer, nonce_older, extra_nonces, bytes([attributes]))


def check_hmac(expected: bytes, provided: bytes) -> bool:
    """Compare two HMACs in constant time."""
    return hmac_mod.compare_digest(expected, provided)


# ----------------------------------------------------------------------------- parameter encryption


def _cfb(session: AuthSession, session_value: bytes, nonce_newer: bytes, nonce_older: bytes, data: bytes,
         encrypt: bool) -> bytes:
    key_bytes = session.symmetric.key_bits // 8
    material = kdfa(session.auth_hash, session_value, b"CFB", nonce_newer, nonce_older, (key_bytes + 16) * 8)
    cipher = Cipher(algorithms.AES(material[:key_bytes]), CFB(material[key_bytes:]))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _xor(session: AuthSession, session_value: bytes, nonce_newer: bytes, nonce_older: bytes, data: bytes) -> bytes:
    mask = kdfa(session.symmetric.mode, session_value, b"XOR", nonce_newer, nonce_older, len(data) * 8)
    return bytes(a ^ b for a, b in zip(data, mask))


def crypt_parameter(session: AuthSession, session_value: bytes, nonce_newer: bytes, nonce_older: bytes,
                    data: bytes, encrypt: bool) -> bytes:
    """Encrypt or decrypt the data bytes of a TPM2B parameter under ``session``."""
    if session.symmetric.algorithm == ALG.AES:
        return _cfb(session, session_value, nonce_newer, nonce_older, data, encrypt)
    if session.symmetric.algorithm == ALG.XOR:
        return _xor(session, session_value, nonce_newer, nonce_older, data)
    raise TpmError(RC.SYMMETRIC)


def is_session_handle(handle: int) -> bool:
    """Whether ``handle`` is an HMAC or policy session handle."""
    return handle >> 24 in (HT.HMAC_SESSION, HT.POLICY_SESSION)


ENCRYPT_FLAGS = TPMA_SESSION.ENCRYPT | TPMA_SESSION.DECRYPT
