"""What the policy assertions share: the policy session a command names, extending its
digest, and the TPMT_TK_AUTH tickets of PolicySigned and PolicySecret (Part 1, 19.7.12).

Tickets are HMACs under the entity's hierarchy proof, so only this TPM can make
or check them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import ALG, HT, RC
from vtpm.core import handle_spec
from vtpm.crypto import HASHES, digest, hmac_digest
from vtpm.entities.hierarchy import hierarchy_proof
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U16
from vtpm.sessions import AuthSession

if TYPE_CHECKING:
    from vtpm.engine import Tpm

POLICY_SESSION = handle_spec("policySession", types=[HT.POLICY_SESSION])


def session_of(tpm: Tpm, handle: int, number: int = 1) -> AuthSession:
    """The policy session a policy command names (the engine already checked it is loaded)."""
    session = tpm.volatile.sessions.get(handle)
    if session is None or not session.is_policy:
        raise TpmError(RC.HANDLE, handle=number)
    return session


def extend(session: AuthSession, code: int, *parts: bytes) -> None:
    """policyDigest_new = H(policyDigest_old || code || parts)."""
    session.policy_digest = digest(session.auth_hash, session.policy_digest, code.to_bytes(4, "big"), *parts)


TICKET_HASH = ALG.SHA256  # HMAC of TPMT_TK_AUTH tickets (only this TPM checks them)
EXPIRES_ON_RESET = 1 << 63  # flag in the timeout returned with a ticket


def auth_ticket_digest(tpm: Tpm, tag: int, hierarchy: int, timeout: int, expires_on_reset: bool, cp_hash: bytes,
                       policy_ref: bytes, name: bytes) -> bytes:
    """The HMAC of a TPMT_TK_AUTH ticket, keyed by the hierarchy's proof.

    A ticket with a timeout also binds this power cycle (TPM time restarts at
    every _TPM_Init, and so does the null proof) and, if asked, the reset count.
    """
    parts = [U16.build(tag), cp_hash, policy_ref, name, timeout.to_bytes(8, "big")]
    if timeout:
        parts.append(tpm.volatile.null_proof)
        if expires_on_reset:
            parts.append(tpm.state.reset_count.to_bytes(4, "big"))
    return hmac_digest(TICKET_HASH, hierarchy_proof(tpm, hierarchy), *parts)


def auth_timeout(tpm: Tpm, session: AuthSession, expiration: int, nonce: bytes) -> int:
    """TPM time (ms) when the assertion lapses: counted from the session start when nonceTPM is given,
    absolute TPM time otherwise; 0 for none."""
    if expiration == 0:
        return 0
    seconds = min(abs(expiration), 0x7FFF_FFFF)
    if not nonce:
        return seconds * 1000 + tpm.now_ms() % 1000
    return session.start_ms + seconds * 1000


def check_parameters(tpm: Tpm, session: AuthSession, timeout: int, cp_hash: bytes, nonce: bytes, *,
                     expiration_param: int = 4, cp_hash_param: int = 2) -> None:
    """nonceTPM (parameter 1), cpHashA and expiration, as PolicySigned, PolicySecret and PolicyTicket need."""
    if nonce and nonce != session.nonce_tpm:
        raise TpmError(RC.NONCE, param=1)
    if timeout and timeout < tpm.now_ms():
        raise TpmError(RC.EXPIRED, param=expiration_param)
    if cp_hash:
        if len(cp_hash) != HASHES[session.auth_hash].size:
            raise TpmError(RC.SIZE, param=cp_hash_param)
        held = session.held_hash()
        if held is not None and held != cp_hash:
            raise TpmError(RC.CPHASH)


def update_context(session: AuthSession, code: int, name: bytes, policy_ref: bytes, cp_hash: bytes,
                   timeout: int) -> None:
    """policyDigest = H(H(old || code || name) || policyRef); keep the cpHash and the earliest timeout."""
    extend(session, code, name)
    session.policy_digest = digest(session.auth_hash, session.policy_digest, policy_ref)
    if cp_hash:
        session.cp_hash, session.name_hash = cp_hash, None
    if timeout and (session.expiration_ms is None or timeout < session.expiration_ms):
        session.expiration_ms = timeout
