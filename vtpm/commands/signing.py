"""Signing and Signature Verification (Part 3, section 20): VerifySignature and Sign."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from vtpm.constants import CC, HT, RC, RH, ST, TPMA_OBJECT
from vtpm.core import Command, Response, command, handle_spec
from vtpm.crypto import HASHES, hmac_digest
from vtpm.entities.commit import create_signature
from vtpm.entities.hierarchy import hierarchy_proof
from vtpm.entities.keys import KEY, signing_key
from vtpm.errors import TpmError
from vtpm.keyops import select_sign_scheme, verify_digest
from vtpm.marshal.objects import TPMT_ASYM_SCHEME, TPMT_SIGNATURE, TPMT_TK
from vtpm.marshal.structures import TPM2B_DIGEST
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
            expected = hmac_digest(alg, hierarchy_proof(tpm, ticket.hierarchy), ST.HASHCHECK.to_bytes(2, "big"),
                                   data_digest)
            if hmac.compare_digest(expected, ticket.digest):
                return
    raise TpmError(RC.TICKET, param=param)


@command(CC.VerifySignature, handles=[handle_spec("keyHandle", types=[HT.TRANSIENT, HT.PERSISTENT])],
         params=[("digest", TPM2B_DIGEST), ("signature", TPMT_SIGNATURE)])
def verify_signature(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_VerifySignature (Part 3 20.1): check a signature over a digest with a loaded key and return a verified
    ticket; TPM_RC_SIGNATURE when it does not verify."""
    key = signing_key(tpm, cmd.handles[0])
    verify_digest(key, cmd.params.signature, cmd.params.digest, 2)
    hierarchy = key.hierarchy
    if hierarchy == RH.NULL:
        ticket = {"tag": ST.VERIFIED, "hierarchy": RH.NULL, "digest": b""}
    else:
        alg = key.public.name_alg
        mac = hmac_digest(alg, hierarchy_proof(tpm, hierarchy), ST.VERIFIED.to_bytes(2, "big"), cmd.params.digest,
                          key.name)
        ticket = {"tag": ST.VERIFIED, "hierarchy": hierarchy, "digest": mac}
    return Response(params=TPMT_TK.build(ticket))


@command(CC.Sign, handles=[KEY],
         params=[("digest", TPM2B_DIGEST), ("inScheme", TPMT_ASYM_SCHEME), ("validation", TPMT_TK)])
def sign(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Sign (Part 3 20.2): sign a digest with a loaded signing key under its or the caller's scheme."""
    key = signing_key(tpm, cmd.handles[0])
    if key.public.has(A.X509_SIGN):  # such a key signs only what CertifyX509 builds
        raise TpmError(RC.ATTRIBUTES, handle=1)
    scheme, alg = select_sign_scheme(key, cmd.params.inScheme, 2)
    data = cmd.params.digest
    if len(data) != HASHES[alg].size:
        raise TpmError(RC.SIZE, param=1)
    check_hash_ticket(tpm, key, data, cmd.params.validation, 3)
    return Response(params=TPMT_SIGNATURE.build(create_signature(tpm, key, scheme, alg, cmd.params.inScheme, data)))
