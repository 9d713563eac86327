"""Tickets the TPM issues under a hierarchy's proof and checks later:
the hash-check ticket of Hash and SequenceComplete."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import RC, RH, ST, TPM_GENERATED_VALUE
from vtpm.crypto import hmac_digest
from vtpm.entities.hierarchy import hierarchy_enabled, hierarchy_proof
from vtpm.errors import TpmError
from vtpm.marshal.structures import TPMT_TK_HASHCHECK

if TYPE_CHECKING:
    from vtpm.engine import Tpm


def check_ticket_hierarchy(tpm: Tpm, hierarchy: int, param: int) -> None:
    """The hierarchy a ticket is asked for must be enabled (TPM_RH_NULL asks for none)."""
    if hierarchy != RH.NULL and not hierarchy_enabled(tpm, hierarchy):
        raise TpmError(RC.HIERARCHY, param=param)


def hash_check_ticket(tpm: Tpm, hierarchy: int, alg: int, out_hash: bytes, first_bytes: bytes) -> bytes:
    """TPMT_TK_HASHCHECK: HMAC over the digest with the hierarchy's proof, or a NULL ticket."""
    if hierarchy == RH.NULL or first_bytes[:4] == TPM_GENERATED_VALUE.to_bytes(4, "big"):
        return TPMT_TK_HASHCHECK.build({"tag": ST.HASHCHECK, "hierarchy": RH.NULL, "digest": b""})
    ticket = hmac_digest(alg, hierarchy_proof(tpm, hierarchy), ST.HASHCHECK.to_bytes(2, "big"), out_hash)
    return TPMT_TK_HASHCHECK.build({"tag": ST.HASHCHECK, "hierarchy": hierarchy, "digest": ticket})
