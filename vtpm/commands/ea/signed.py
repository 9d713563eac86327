"""Policy assertions proven with keys and tickets (Part 3, 23.3, 23.5, 23.16):
PolicySigned, PolicyTicket and PolicyAuthorize.

PolicySigned: the holder of a signing key approves this session (its nonce,
an expiration, a cpHash and a policyRef). PolicyTicket replays an earlier
PolicySigned or PolicySecret through the ticket the TPM issued. PolicyAuthorize
replaces the session's digest by "whatever this key approved", which lets a
policy be updated without re-creating the objects that use it.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import construct as cs

from vtpm.commands.ea.common import (
    EXPIRES_ON_RESET,
    POLICY_SESSION,
    auth_ticket_digest,
    auth_timeout,
    check_parameters,
    extend,
    session_of,
    update_context,
)
from vtpm.constants import CC, HT, RC, RH, ST
from vtpm.core import Command, Response, command, handle_spec
from vtpm.crypto import HASHES, digest, hmac_digest
from vtpm.entities.hierarchy import TPMI_RH_HIERARCHY_NULL, hierarchy_proof
from vtpm.entities.object_table import get_object
from vtpm.errors import TpmError
from vtpm.keyops import verify_digest
from vtpm.marshal.objects import TPMT_SIGNATURE, TPMT_TK
from vtpm.marshal.primitives import I32, U16, OneOf
from vtpm.marshal.structures import TPM2B_DIGEST, TPM2B_NAME, TPM2B_NONCE

if TYPE_CHECKING:
    from vtpm.engine import Tpm

TPM2B_TIMEOUT = TPM2B_DIGEST  # 8 bytes in practice; up to a digest in size
# TPMT_TK_AUTH: the tag of a PolicySigned or PolicySecret ticket (else TPM_RC_TAG) and a hierarchy
# (TPMI_RH_HIERARCHY+, else TPM_RC_VALUE: TPM_RH_LOCKOUT is no hierarchy and has no proof).
TPMT_TK_AUTH = cs.Struct(
    "tag" / OneOf(U16, (ST.AUTH_SIGNED, ST.AUTH_SECRET), RC.TAG),
    "hierarchy" / TPMI_RH_HIERARCHY_NULL,
    "digest" / TPM2B_DIGEST,
)


def _signature_hash(signature: object) -> int:
    body = signature.signature  # type: ignore[attr-defined]
    alg = getattr(body, "hash", None)
    if alg is None:
        alg = getattr(body, "hashAlg", None)
    if alg not in HASHES:
        raise TpmError(RC.SCHEME, param=5)
    return alg


@command(
    CC.PolicySigned,
    handles=[handle_spec("authObject", types=[HT.TRANSIENT, HT.PERSISTENT]), POLICY_SESSION],
    params=[("nonceTPM", TPM2B_NONCE), ("cpHashA", TPM2B_DIGEST), ("policyRef", TPM2B_NONCE), ("expiration", I32),
            ("auth", TPMT_SIGNATURE)],
    response_tpm2b=True,
)
def policy_signed(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PolicySigned (Part 3 23.3): an assertion signed by a key over the session's nonce, expiration, cpHash
    and policyRef; a negative expiration also returns a ticket for PolicyTicket."""
    key = get_object(tpm, cmd.handles[0])
    session = session_of(tpm, cmd.handles[1], 2)
    p = cmd.params
    timeout = 0
    if not session.is_trial:
        timeout = auth_timeout(tpm, session, p.expiration, p.nonceTPM)
        check_parameters(tpm, session, timeout, p.cpHashA, p.nonceTPM)
        alg = _signature_hash(p.auth)
        a_hash = digest(alg, p.nonceTPM, p.expiration.to_bytes(4, "big", signed=True), p.cpHashA, p.policyRef)
        verify_digest(key, p.auth, a_hash, 5)
    update_context(session, CC.PolicySigned, key.name, p.policyRef, p.cpHashA, timeout)
    if p.expiration < 0 and not session.is_trial:
        expires_on_reset = not p.nonceTPM
        ticket = auth_ticket_digest(tpm, ST.AUTH_SIGNED, key.hierarchy, timeout, expires_on_reset, p.cpHashA,
                                    p.policyRef, key.name)
        flagged = timeout | (EXPIRES_ON_RESET if expires_on_reset else 0)
        out = TPM2B_DIGEST.build(flagged.to_bytes(8, "big"))
        out += U16.build(ST.AUTH_SIGNED) + key.hierarchy.to_bytes(4, "big") + TPM2B_DIGEST.build(ticket)
    else:
        out = TPM2B_DIGEST.build(b"") + U16.build(ST.AUTH_SIGNED) + RH.NULL.to_bytes(4, "big") + TPM2B_DIGEST.build(b"")
    return Response(params=out)


@command(
    CC.PolicyTicket,
    handles=[POLICY_SESSION],
    params=[("timeout", TPM2B_TIMEOUT), ("cpHashA", TPM2B_DIGEST), ("policyRef", TPM2B_NONCE),
            ("authName", TPM2B_NAME), ("ticket", TPMT_TK_AUTH)],
)
def policy_ticket(tpm: Tpm, cmd: Command) -> Response:
    """Replay a PolicySigned or PolicySecret through its ticket, in the reference implementation's order."""
    session = session_of(tpm, cmd.handles[0])
    p = cmd.params
    if session.is_trial:  # a trial policy uses the authorization itself, never a ticket
        raise TpmError(RC.ATTRIBUTES, handle=1)
    codes = {ST.AUTH_SIGNED: CC.PolicySigned, ST.AUTH_SECRET: CC.PolicySecret}
    if len(p.timeout) != 8:
        raise TpmError(RC.SIZE, param=1)
    flagged = int.from_bytes(p.timeout, "big")
    timeout = flagged & ~EXPIRES_ON_RESET
    check_parameters(tpm, session, timeout, p.cpHashA, b"", expiration_param=1, cp_hash_param=2)
    expected = auth_ticket_digest(tpm, p.ticket.tag, p.ticket.hierarchy, timeout, bool(flagged & EXPIRES_ON_RESET),
                                  p.cpHashA, p.policyRef, p.authName)
    if not hmac.compare_digest(expected, p.ticket.digest):
        raise TpmError(RC.TICKET, param=5)
    update_context(session, codes[p.ticket.tag], p.authName, p.policyRef, p.cpHashA, timeout)
    return Response()


@command(
    CC.PolicyAuthorize,
    handles=[POLICY_SESSION],
    params=[("approvedPolicy", TPM2B_DIGEST), ("policyRef", TPM2B_NONCE), ("keySign", TPM2B_NAME),
            ("checkTicket", TPMT_TK)],
)
def policy_authorize(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PolicyAuthorize (Part 3 23.16): replace the policy digest by one of the authorizing key's Name and
    policyRef when a verified ticket says that key signed the current digest; TPM_RC_VALUE when it does not."""
    session = session_of(tpm, cmd.handles[0])
    p = cmd.params
    key_name = p.keySign
    if len(key_name) < 2 or int.from_bytes(key_name[:2], "big") not in HASHES:
        raise TpmError(RC.HASH, param=3)
    name_alg = int.from_bytes(key_name[:2], "big")
    if len(key_name) != 2 + HASHES[name_alg].size:
        raise TpmError(RC.SIZE, param=3)
    if not session.is_trial:
        if not hmac.compare_digest(p.approvedPolicy, session.policy_digest):
            raise TpmError(RC.VALUE, param=1)
        ticket = p.checkTicket
        if ticket.tag != ST.VERIFIED or ticket.hierarchy not in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM):
            raise TpmError(RC.VALUE, param=4)
        a_hash = digest(name_alg, p.approvedPolicy, p.policyRef)
        expected = hmac_digest(name_alg, hierarchy_proof(tpm, ticket.hierarchy), ST.VERIFIED.to_bytes(2, "big"), a_hash,
                               key_name)
        if not hmac.compare_digest(expected, ticket.digest):
            raise TpmError(RC.VALUE, param=4)
    session.policy_digest = bytes(HASHES[session.auth_hash].size)
    extend(session, CC.PolicyAuthorize, key_name)
    session.policy_digest = digest(session.auth_hash, session.policy_digest, p.policyRef)
    return Response()
