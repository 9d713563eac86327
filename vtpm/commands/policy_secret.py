"""PolicySecret and its TPMT_TK_AUTH tickets (Part 3, 23.4; Part 1, 19.7.12).

PolicySecret asserts knowledge of an entity's authValue: the command's own
authorization session for authHandle is the proof, checked by the engine like
any other. An expiration limits how long the assertion holds; a negative one
also returns a ticket that a later PolicyTicket can present instead of the
secret. Tickets are HMACs under the entity's hierarchy proof, so only this TPM
can make or check them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


from vtpm.commands.policy import POLICY_SESSION, extend, session_of
from vtpm.constants import ALG, CC, HT, NT, RC, RH, ST, TPMA_NV
from vtpm.core import ENTITY_RESOLVERS, Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, digest, hmac_digest
from vtpm.entities.hierarchy import hierarchy_proof
from vtpm.errors import TpmError
from vtpm.marshal.primitives import I32, U16
from vtpm.marshal.structures import TPM2B_DIGEST, TPM2B_NONCE
from vtpm.sessions import AuthSession

if TYPE_CHECKING:
    from vtpm.engine import Tpm

TICKET_HASH = ALG.SHA256  # HMAC of TPMT_TK_AUTH tickets (only this TPM checks them)
EXPIRES_ON_RESET = 1 << 63  # flag in the timeout returned with a ticket

ENTITY = handle_spec(
    "authHandle", Auth.USER, types=[HT.NV_INDEX, HT.PCR, HT.TRANSIENT, HT.PERSISTENT],
    permanent=(RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.LOCKOUT),
)


def hierarchy_of(tpm: Tpm, handle: int) -> int:
    """The hierarchy whose proof keys a ticket for this entity (as the reference implementation)."""
    kind = handle >> 24
    if kind == HT.PERMANENT:
        return handle if handle in (RH.PLATFORM, RH.ENDORSEMENT, RH.NULL) else RH.OWNER
    if kind == HT.NV_INDEX:
        return RH.PLATFORM if tpm.state.nv[handle].has(TPMA_NV.PLATFORMCREATE) else RH.OWNER
    if kind == HT.PCR:
        return RH.OWNER
    if kind == HT.TRANSIENT:
        return getattr(tpm.volatile.objects.get(handle), "hierarchy", RH.NULL)  # a hash sequence has none
    entry = tpm.state.persistent.get(handle)
    return entry["hierarchy"] if entry else RH.NULL


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


def check_parameters(tpm: Tpm, session: AuthSession, timeout: int, cp_hash: bytes, nonce: bytes) -> None:
    """nonceTPM (parameter 1), cpHashA (parameter 2) and expiration (parameter 4), as PolicySigned also needs."""
    if nonce and nonce != session.nonce_tpm:
        raise TpmError(RC.NONCE, param=1)
    if timeout and timeout < tpm.now_ms():
        raise TpmError(RC.EXPIRED, param=4)
    if cp_hash:
        if len(cp_hash) != HASHES[session.auth_hash].size:
            raise TpmError(RC.SIZE, param=2)
        held = session.cp_hash if session.cp_hash is not None else session.name_hash
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


@command(
    CC.PolicySecret,
    handles=[ENTITY, POLICY_SESSION],
    params=[("nonceTPM", TPM2B_NONCE), ("cpHashA", TPM2B_DIGEST), ("policyRef", TPM2B_NONCE), ("expiration", I32)],
    response_tpm2b=True,
)
def policy_secret(tpm: Tpm, cmd: Command) -> Response:
    auth_handle = cmd.handles[0]
    session = session_of(tpm, cmd.handles[1], 2)
    p = cmd.params
    timeout = 0
    if not session.is_trial:
        timeout = auth_timeout(tpm, session, p.expiration, p.nonceTPM)
        check_parameters(tpm, session, timeout, p.cpHashA, p.nonceTPM)
    name = ENTITY_RESOLVERS[auth_handle >> 24](tpm, auth_handle).name or auth_handle.to_bytes(4, "big")
    update_context(session, CC.PolicySecret, name, p.policyRef, p.cpHashA, timeout)

    pin_pass = auth_handle >> 24 == HT.NV_INDEX and tpm.state.nv[auth_handle].kind == NT.PIN_PASS
    if p.expiration < 0 and not session.is_trial and not pin_pass:
        hierarchy = hierarchy_of(tpm, auth_handle)
        expires_on_reset = not p.nonceTPM
        ticket = auth_ticket_digest(tpm, ST.AUTH_SECRET, hierarchy, timeout, expires_on_reset, p.cpHashA,
                                    p.policyRef, name)
        flagged = timeout | (EXPIRES_ON_RESET if expires_on_reset else 0)
        out = TPM2B_DIGEST.build(flagged.to_bytes(8, "big"))
    else:  # no ticket: an empty timeout and a NULL ticket
        hierarchy, ticket, out = RH.NULL, b"", TPM2B_DIGEST.build(b"")
    out += U16.build(ST.AUTH_SECRET) + hierarchy.to_bytes(4, "big") + TPM2B_DIGEST.build(ticket)
    return Response(params=out)
