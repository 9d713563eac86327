"""Signing and attestation (Part 3, sections 18 and 20): Sign, VerifySignature, HMAC,
Quote, Certify, GetTime."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from vtpm.constants import ALG, CC, HT, RC, RH, ST, TPMA_OBJECT
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, hmac_digest
from vtpm.entities.attestation import FIRMWARE_VERSION, optional_signer, signed_attestation
from vtpm.entities.clock import time_info
from vtpm.entities.hierarchy import hierarchy_proof
from vtpm.entities.keys import KEY, hmac_key, signing_key
from vtpm.entities.nv import check_read_access, nv_index
from vtpm.entities.object_table import get_object
from vtpm.entities.pcr import pcr_digest
from vtpm.errors import TpmError
from vtpm.keyops import select_sign_scheme, sign_digest, verify_digest
from vtpm.marshal.objects import TPMT_ASYM_SCHEME, TPMT_SIGNATURE, TPMT_TK
from vtpm.marshal.primitives import U16
from vtpm.marshal.structures import TPM2B_DATA, TPM2B_DIGEST, TPM2B_MAX_BUFFER, TPMI_ALG_HASH_NULL, TPML_PCR_SELECTION
from vtpm.objects import LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT


def check_hash_ticket(tpm: Tpm, key: LoadedObject, data_digest: bytes, ticket: Any, param: int) -> None:
    """A restricted key signs only digests the TPM hashed itself (Part 3 20.2)."""
    if not key.public.has(A.RESTRICTED):
        return
    if ticket.tag != ST.HASHCHECK or ticket.hierarchy == RH.NULL or ticket.hierarchy not in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM):
        raise TpmError(RC.TICKET, param=param)
    for alg in HASHES:
        if HASHES[alg].size == len(data_digest):
            expected = hmac_digest(alg, hierarchy_proof(tpm, ticket.hierarchy), ST.HASHCHECK.to_bytes(2, "big"), data_digest)
            if hmac.compare_digest(expected, ticket.digest):
                return
    raise TpmError(RC.TICKET, param=param)


@command(CC.Sign, handles=[KEY],
         params=[("digest", TPM2B_DIGEST), ("inScheme", TPMT_ASYM_SCHEME), ("validation", TPMT_TK)])
def sign(tpm: Tpm, cmd: Command) -> Response:
    key = signing_key(tpm, cmd.handles[0])
    scheme, alg = select_sign_scheme(key, cmd.params.inScheme, 2)
    data = cmd.params.digest
    if len(data) != HASHES[alg].size:
        raise TpmError(RC.SIZE, param=1)
    check_hash_ticket(tpm, key, data, cmd.params.validation, 3)
    return Response(params=TPMT_SIGNATURE.build(sign_digest(key, scheme, alg, data)))


@command(CC.VerifySignature, handles=[handle_spec("keyHandle", types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("digest", TPM2B_DIGEST), ("signature", TPMT_SIGNATURE)])
def verify_signature(tpm: Tpm, cmd: Command) -> Response:
    key = signing_key(tpm, cmd.handles[0])
    verify_digest(key, cmd.params.signature, cmd.params.digest, 2)
    hierarchy = key.hierarchy
    if hierarchy == RH.NULL:
        ticket = {"tag": ST.VERIFIED, "hierarchy": RH.NULL, "digest": b""}
    else:
        alg = key.public.name_alg
        mac = hmac_digest(alg, hierarchy_proof(tpm, hierarchy), ST.VERIFIED.to_bytes(2, "big"), cmd.params.digest, key.name)
        ticket = {"tag": ST.VERIFIED, "hierarchy": hierarchy, "digest": mac}
    return Response(params=TPMT_TK.build(ticket))


@command(CC.HMAC, handles=[handle_spec("handle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("buffer", TPM2B_MAX_BUFFER), ("hashAlg", TPMI_ALG_HASH_NULL)], response_tpm2b=True)
def hmac_command(tpm: Tpm, cmd: Command) -> Response:
    key, alg = hmac_key(tpm, cmd.handles[0], cmd.params.hashAlg)
    return Response(params=TPM2B_DIGEST.build(hmac_digest(alg, key, cmd.params.buffer)))


# ----------------------------------------------------------------------------- attestation


SIGN_HANDLE = handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])


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


@command(CC.GetTime,
         handles=[handle_spec("privacyAdminHandle", Auth.USER, permanent=[RH.ENDORSEMENT]),
                  handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME)], response_tpm2b=True)
def get_time(tpm: Tpm, cmd: Command) -> Response:
    key = optional_signer(tpm, cmd.handles[1], 2)
    info = {"time": time_info(tpm), "firmwareVersion": FIRMWARE_VERSION}
    return Response(params=signed_attestation(tpm, key, cmd.params.inScheme, 2, ST.ATTEST_TIME,
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


@command(CC.NV_Certify,
         handles=[handle_spec("signHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL]),
                  handle_spec("authHandle", Auth.USER, types=[HT.NV_INDEX], permanent=(RH.OWNER, RH.PLATFORM)),
                  handle_spec("nvIndex", types=[HT.NV_INDEX])],
         params=[("qualifyingData", TPM2B_DATA), ("inScheme", TPMT_ASYM_SCHEME), ("size", U16), ("offset", U16)],
         response_tpm2b=True)
def nv_certify(tpm: Tpm, cmd: Command) -> Response:
    """Sign the contents of an NV index the caller may read (Part 3 31.16)."""
    key = optional_signer(tpm, cmd.handles[0], 1)
    index = nv_index(tpm, cmd.handles[2])
    check_read_access(tpm, cmd, cmd.handles[1], index)
    p = cmd.params
    if p.offset > index.data_size or p.size > index.data_size - p.offset:
        raise TpmError(RC.NV_RANGE)
    info = {"indexName": index.name, "offset": p.offset, "nvContents": index.data[p.offset : p.offset + p.size]}
    return Response(params=signed_attestation(tpm, key, p.inScheme, 2, ST.ATTEST_NV, p.qualifyingData, info))
