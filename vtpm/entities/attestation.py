"""What every attestation shares (Part 3, 18, and NV_Certify in 31): the TPMS_ATTEST
structure, its signature, and a sign handle that may be TPM_RH_NULL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtpm.constants import ALG, RH, TPM_GENERATED_VALUE
from vtpm.crypto import digest
from vtpm.entities.clock import time_info
from vtpm.entities.commit import create_signature
from vtpm.entities.keys import signing_key
from vtpm.keyops import select_sign_scheme
from vtpm.marshal.objects import TPMS_ATTEST, TPMT_SIGNATURE
from vtpm.objects import LoadedObject

if TYPE_CHECKING:
    from vtpm.engine import Tpm

FIRMWARE_VERSION = 0x0001000000000000


def optional_signer(tpm: Tpm, handle: int, number: int) -> LoadedObject | None:
    """The signing key at ``handle`` (TPM_RC_KEY, for handle ``number``, if it cannot sign), or None for TPM_RH_NULL: an
    attestation left unsigned."""
    return None if handle == RH.NULL else signing_key(tpm, handle, number)


ANONYMOUS_SCHEMES = {ALG.ECDAA}  # an anonymous signature does not name its signer


def attest(tpm: Tpm, key: LoadedObject, kind: int, extra: bytes, attested: dict[str, Any], *,
           anonymous: bool = False) -> bytes:
    """A marshalled TPMS_ATTEST of type ``kind``: TPM_GENERATED_VALUE, the signer's qualified name (empty when
    anonymous), extraData, the clock and firmware version, and the attested structure."""
    clock = time_info(tpm)["clockInfo"]
    return TPMS_ATTEST.build({
        "magic": TPM_GENERATED_VALUE,
        "type": kind,
        "qualifiedSigner": b"" if anonymous else key.qualified_name,
        "extraData": extra,
        "clockInfo": clock,
        "firmwareVersion": FIRMWARE_VERSION,
        "attested": attested,
    })


def signed_attestation(tpm: Tpm, key: LoadedObject | None, scheme_param: Any, param: int, kind: int, extra: bytes,
                       attested: dict[str, Any]) -> bytes:
    """TPM2B_ATTEST and TPMT_SIGNATURE; an unsigned attestation when the sign handle is TPM_RH_NULL."""
    if key is None:  # unsigned; the signer's Name is TPM_RH_NULL
        body = TPMS_ATTEST.build({
            "magic": TPM_GENERATED_VALUE, "type": kind, "qualifiedSigner": RH.NULL.to_bytes(4, "big"),
            "extraData": extra, "clockInfo": time_info(tpm)["clockInfo"], "firmwareVersion": FIRMWARE_VERSION,
            "attested": attested,
        })
        return len(body).to_bytes(2, "big") + body + TPMT_SIGNATURE.build({"sigAlg": ALG.NULL, "signature": None})
    scheme, alg = select_sign_scheme(key, scheme_param, param)
    body = attest(tpm, key, kind, extra, attested, anonymous=scheme in ANONYMOUS_SCHEMES)
    signature = create_signature(tpm, key, scheme, alg, scheme_param, digest(alg, body))
    return len(body).to_bytes(2, "big") + body + TPMT_SIGNATURE.build(signature)
