"""Attestation Commands (Part 3, section 18): Certify, CertifyCreation, Quote, GetSessionAuditDigest,
GetCommandAuditDigest, GetTime and CertifyX509."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from vtpm import x509
from vtpm.constants import ALG, CC, HT, RC, RH, ST
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, digest, hmac_digest
from vtpm.entities.attestation import FIRMWARE_VERSION, optional_signer, signed_attestation
from vtpm.entities.audit import commands_digest, reset_digest
from vtpm.entities.clock import time_info
from vtpm.entities.commit import create_signature
from vtpm.entities.keys import signing_key
from vtpm.entities.hierarchy import hierarchy_proof
from vtpm.entities.object_table import get_object
from vtpm.entities.pcr import pcr_digest
from vtpm.errors import TpmError
from vtpm.keyops import select_sign_scheme
from vtpm.marshal.objects import TPMT_ASYM_SCHEME, TPMT_SIGNATURE, TPMT_TK
from vtpm.marshal.structures import TPM2B_DATA, TPM2B_DIGEST, TPM2B_MAX_BUFFER, TPML_PCR_SELECTION
from vtpm.objects import LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

SIGN_HANDLE = handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])


@command(CC.Certify,
         handles=[handle_spec("objectHandle", Auth.ADMIN, types=[HT.TRANSIENT, HT.PERSISTENT]),
                  handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME)], response_tpm2b=True)
def certify(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Certify (Part 3 18.2): sign a TPMS_CERTIFY_INFO (Name and qualified name) of a loaded object with a signing
    key, or return it unsigned under TPM_RH_NULL."""
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
    """TPM2_Quote (Part 3 18.4): sign the selection and digest of the PCRs selected, with qualifyingData, under a
    signing key (or TPM_RH_NULL for an unsigned one)."""
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
    """TPM2_GetTime (Part 3 18.7): sign the TPM's time and clock (TPMS_TIME_ATTEST_INFO) under endorsement
    authorization."""
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


@command(CC.CertifyX509,
         handles=[handle_spec("objectHandle", Auth.ADMIN, types=[HT.TRANSIENT, HT.PERSISTENT]),
                  handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("reserved", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME), ("partialCertificate", TPM2B_MAX_BUFFER)],
         response_tpm2b=True)
def certify_x509(tpm: Tpm, cmd: Command) -> Response:
    """Complete and sign a TBSCertificate for a loaded key (Part 3 18.8): the caller gives issuer,
    validity, subject, extensions (and optionally the signature algorithm); the TPM adds the version,
    a serial number (a digest of everything else and both Names), the algorithm and the subject
    public key, and returns what it added, the TBS digest and the signature over it."""
    p = cmd.params
    if p.reserved:
        raise TpmError(RC.SIZE, param=1)
    obj = get_object(tpm, cmd.handles[0])
    key = signing_key(tpm, cmd.handles[1], 2)
    scheme, alg = select_sign_scheme(key, p.inScheme, 2)
    spki = _subject_public_key(obj)
    if spki is None:
        raise TpmError(RC.ASYMMETRIC, handle=1)
    data = p.partialCertificate
    partial = x509.parse_partial(data)
    signature_alg = partial.signature
    if not signature_alg:
        key_bytes = len(key.public.area.unique) if key.public.type == ALG.RSA else 0
        signature_alg = x509.signing_algorithm(key.public.type, scheme, alg, key_bytes, HASHES[alg].size) or b""
        if not signature_alg:
            raise TpmError(RC.SCHEME, handle=2)
        added_alg = signature_alg
    else:
        added_alg = b""
    x509.check_extensions(data, partial.extensions, obj.public.attributes)
    extensions = partial.extensions.raw(data)
    tail = signature_alg + partial.issuer + partial.validity + partial.subject + spki + extensions
    serial = digest(key.public.name_alg, tail, key.name, obj.name)[: x509.SERIAL_NUMBER_SIZE]
    serial_der = x509.integer(serial)
    version = x509.tlv(x509.CONTEXT_0, x509.integer(b"\x02"))
    tbs = x509.tlv(x509.SEQUENCE, version + serial_der + tail)
    tbs_digest = digest(alg, tbs)
    added = x509.tlv(x509.SEQUENCE, version + serial_der + added_alg + spki)
    signature = create_signature(tpm, key, scheme, alg, p.inScheme, tbs_digest)
    return Response(params=TPM2B_MAX_BUFFER.build(added) + TPM2B_DIGEST.build(tbs_digest)
                    + TPMT_SIGNATURE.build(signature))


def _subject_public_key(obj: LoadedObject) -> bytes | None:
    area = obj.public.area
    if obj.public.type == ALG.RSA:
        return x509.rsa_public_key(area.unique, area.parameters.exponent)
    if obj.public.type == ALG.ECC:
        return x509.ecc_public_key(area.parameters.curveID, area.unique.x, area.unique.y)
    return None
