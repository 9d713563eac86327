"""Attestation Commands (Part 3, section 18): Certify, CertifyCreation, Quote, GetSessionAuditDigest,
GetCommandAuditDigest, GetTime."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from vtpm.constants import ALG, CC, HT, RC, RH, ST
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import hmac_digest
from vtpm.entities.attestation import FIRMWARE_VERSION, optional_signer, signed_attestation
from vtpm.entities.audit import commands_digest, reset_digest
from vtpm.entities.clock import time_info
from vtpm.entities.hierarchy import hierarchy_proof
from vtpm.entities.object_table import get_object
from vtpm.entities.pcr import pcr_digest
from vtpm.errors import TpmError
from vtpm.keyops import select_sign_scheme
from vtpm.marshal.objects import TPMT_ASYM_SCHEME, TPMT_TK
from vtpm.marshal.structures import TPM2B_DATA, TPM2B_DIGEST, TPML_PCR_SELECTION

if TYPE_CHECKING:
    from vtpm.engine import Tpm

SIGN_HANDLE = handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])


@command(CC.Certify,
         handles=[handle_spec("objectHandle", Auth.ADMIN, types=[HT.TRANSIENT, HT.PERSISTENT]),
                  handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME)], response_tpm2b=True)
def certify(tpm: Tpm, cmd: Command) -> Response:
    obj = get_object(tpm, cmd.handles[0])
    key = optional_signer(tpm, cmd.handles[1], 2)
    info = {"name": obj.name, "qualifiedName": obj.qualified_name}
    return Response(params=signed_attestation(tpm, key, cmd.params.inScheme, 2, ST.ATTEST_CERTIFY,
                                              cmd.params.qualifyingData, info))


@command(CC.CertifyCreation,
         handles=[handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL]),
                  handle_spec("objectHandle", types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("qualifyingData", TPM2B_DATA), ("creationHash", TPM2B_DIGEST), ("inScheme", TPMT_ASYM_SCHEME),
                 ("creationTicket", TPMT_TK)], response_tpm2b=True)
def certify_creation(tpm: Tpm, cmd: Command) -> Response:
    """Vouch that the TPM created an object with this creation data (the ticket proves it)."""
    key = optional_signer(tpm, cmd.handles[0], 1)
    obj = get_object(tpm, cmd.handles[1], 2)
    p = cmd.params
    ticket = p.creationTicket
    if ticket.tag != ST.CREATION or ticket.hierarchy == RH.NULL or ticket.hierarchy not in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM):
        raise TpmError(RC.TICKET, param=4)
    expected = hmac_digest(obj.public.name_alg, hierarchy_proof(tpm, ticket.hierarchy), ST.CREATION.to_bytes(2, "big"),
                           obj.name, p.creationHash)
    if not hmac.compare_digest(expected, ticket.digest):
        raise TpmError(RC.TICKET, param=4)
    info = {"objectName": obj.name, "creationHash": p.creationHash}
    return Response(params=signed_attestation(tpm, key, p.inScheme, 3, ST.ATTEST_CREATION, p.qualifyingData, info))


@command(CC.Quote, handles=[SIGN_HANDLE],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME), ("PCRselect", TPML_PCR_SELECTION)],
         response_tpm2b=True)
def quote(tpm: Tpm, cmd: Command) -> Response:
    key = optional_signer(tpm, cmd.handles[0], 1)
    p = cmd.params
    alg = select_sign_scheme(key, p.inScheme, 2)[1] if key else ALG.SHA256
    selection = [{"hash": s.hash, "pcrSelect": s.pcrSelect} for s in p.PCRselect]
    info = {"pcrSelect": selection, "pcrDigest": pcr_digest(tpm, alg, p.PCRselect)}
    return Response(params=signed_attestation(tpm, key, p.inScheme, 2, ST.ATTEST_QUOTE, p.qualifyingData, info))


@command(CC.GetTime,
         handles=[handle_spec("privacyAdminHandle", Auth.USER, permanent=[RH.ENDORSEMENT]),
                  handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME)], response_tpm2b=True)
def get_time(tpm: Tpm, cmd: Command) -> Response:
    key = optional_signer(tpm, cmd.handles[1], 2)
    info = {"time": time_info(tpm), "firmwareVersion": FIRMWARE_VERSION}
    return Response(params=signed_attestation(tpm, key, cmd.params.inScheme, 2, ST.ATTEST_TIME,
                                              cmd.params.qualifyingData, info))


@command(CC.GetSessionAuditDigest,
         handles=[handle_spec("privacyAdminHandle", Auth.USER, permanent=[RH.ENDORSEMENT]),
                  handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL]),
                  handle_spec("sessionHandle", types=[HT.HMAC_SESSION])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME)], response_tpm2b=True)
def get_session_audit_digest(tpm: Tpm, cmd: Command) -> Response:
    """The audit digest of an audit session, and whether it is exclusive (Part 3 18.5)."""
    key = optional_signer(tpm, cmd.handles[1], 2)
    if key is not None:
        select_sign_scheme(key, cmd.params.inScheme, 2)
    handle = cmd.handles[2]
    session = tpm.volatile.sessions.get(handle)
    if session is None or not session.is_audit:
        raise TpmError(RC.TYPE, handle=3)
    info = {"exclusiveSession": int(tpm.volatile.exclusive_audit_session == handle),
            "sessionDigest": session.audit_digest}
    return Response(params=signed_attestation(tpm, key, cmd.params.inScheme, 2, ST.ATTEST_SESSION_AUDIT,
                                              cmd.params.qualifyingData, info))


@command(CC.GetCommandAuditDigest,
         handles=[handle_spec("privacyHandle", Auth.USER, permanent=[RH.ENDORSEMENT]),
                  handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME)], response_tpm2b=True)
def get_command_audit_digest(tpm: Tpm, cmd: Command) -> Response:
    """The command audit digest, its counter and the digest of the audited command list (Part 3 18.6);
    a signed report starts a new audit digest."""
    key = optional_signer(tpm, cmd.handles[1], 2)
    state = tpm.state
    info = {"auditCounter": state.audit_counter, "digestAlg": state.audit_hash_alg,
            "auditDigest": state.command_audit_digest, "commandDigest": commands_digest(tpm)}
    out = signed_attestation(tpm, key, cmd.params.inScheme, 2, ST.ATTEST_COMMAND_AUDIT, cmd.params.qualifyingData,
                             info)
    if key is not None:
        reset_digest(tpm)
    return Response(params=out)

