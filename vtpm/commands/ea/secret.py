"""PolicySecret (Part 3, 23.4; Part 1, 19.7.12).

PolicySecret asserts knowledge of an entity's authValue: the command's own
authorization session for authHandle is the proof, checked by the engine like
any other. An expiration limits how long the assertion holds; a negative one
also returns a ticket that a later PolicyTicket can present instead of the
secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.commands.ea.common import (
    EXPIRES_ON_RESET,
    POLICY_SESSION,
    auth_ticket_digest,
    auth_timeout,
    check_parameters,
    session_of,
    update_context,
)
from vtpm.constants import CC, HT, NT, RH, ST, TPMA_NV
from vtpm.core import ENTITY_RESOLVERS, Auth, Command, Response, command, handle_spec
from vtpm.marshal.primitives import I32, U16
from vtpm.marshal.structures import TPM2B_DIGEST, TPM2B_NONCE

if TYPE_CHECKING:
    from vtpm.engine import Tpm

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


@command(
    CC.PolicySecret,
    handles=[ENTITY, POLICY_SESSION],
    params=[("nonceTPM", TPM2B_NONCE), ("cpHashA", TPM2B_DIGEST), ("policyRef", TPM2B_NONCE), ("expiration", I32)],
    response_tpm2b=True,
)
def policy_secret(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PolicySecret (Part 3 23.4): an assertion authorized by an entity's authorization, with an optional
    expiration; a negative expiration also returns a ticket for PolicyTicket."""
    auth_handle = cmd.handles[0]
    session = session_of(tpm, cmd.handles[1], 2)
    p = cmd.params
    timeout = 0
    if not session.is_trial:
        timeout = auth_timeout(tpm, session, p.expiration, p.nonceTPM)
        check_parameters(tpm, session, timeout, p.cpHashA, p.nonceTPM)
    name = ENTITY_RESOLVERS[auth_handle >> 24](tpm, auth_handle).name_for(auth_handle)
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
