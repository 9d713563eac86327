"""Endorsement key templates of the TCG EK Credential Profile (low and high range).

Each template names the NV index where the EK certificate for that key lives. The low
range (RSA 2048, ECC P-256) is what most tools create by default (`tpm2_createek`):
no userWithAuth, PolicyA (PolicySecret(TPM_RH_ENDORSEMENT)), a zero-filled unique field.
The high range uses PolicyB, userWithAuth, an empty unique field and stronger hashes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import construct as cs

from vtpm.constants import ALG, ECC_CURVE, TPMA_OBJECT
from vtpm.marshal.objects import TPMT_PUBLIC

A = TPMA_OBJECT
EK_ATTRIBUTES = (A.FIXED_TPM | A.FIXED_PARENT | A.SENSITIVE_DATA_ORIGIN | A.ADMIN_WITH_POLICY | A.RESTRICTED
                 | A.DECRYPT)

# PolicyA: PolicySecret(TPM_RH_ENDORSEMENT) under SHA-256
POLICY_A_SHA256 = bytes.fromhex("837197674484B3F81A90CC8D46A5D724FD52D76E06520B64F2A1DA1B331469AA")
# PolicyB: PolicyOR of PolicyA and PolicyC under SHA-384 / SHA-512
POLICY_B_SHA384 = bytes.fromhex(
    "B26E7D28D11A50BC53D882BCF5FD3A1A074148BB35D3B4E4CB1C0AD9BDE419CACB47BA09699646150F9FC000F3F80E12")
POLICY_B_SHA512 = bytes.fromhex(
    "B8221CA69E8550A4914DE3FAA6A18C072CC01208073A928D5D66D59EF79E49A4"
    "29C41A6B269571D57EDB25FBDB1838425608B413CD616A5F6DB5B6071AF99BEA")


class EkKind(str, enum.Enum):
    """The EK kinds of the TCG EK Credential Profile's templates this TPM can create."""
    RSA2048 = "rsa2048"
    ECC_P256 = "ecc-p256"
    ECC_P384 = "ecc-p384"
    ECC_P521 = "ecc-p521"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"


@dataclass(frozen=True)
class EkTemplate:
    """One EK template: the TPMT_PUBLIC, the NV index of its certificate, and whether it is a high-range one."""
    kind: EkKind
    cert_index: int  # NV index of the EK certificate
    high_range: bool
    template: bytes  # TPMT_PUBLIC

    @property
    def is_rsa(self) -> bool:
        """Whether the EK is an RSA key."""
        return self.kind in (EkKind.RSA2048, EkKind.RSA3072, EkKind.RSA4096)


def _rsa(bits: int, name_alg: int, policy: bytes, aes_bits: int, high: bool) -> bytes:
    return TPMT_PUBLIC.build({
        "type": ALG.RSA,
        "nameAlg": name_alg,
        "objectAttributes": int(EK_ATTRIBUTES | (A.USER_WITH_AUTH if high else 0)),
        "authPolicy": policy,
        "parameters": {
            "symmetric": {"algorithm": ALG.AES, "keyBits": aes_bits, "mode": ALG.CFB},
            "scheme": {"scheme": ALG.NULL, "details": None},
            "keyBits": bits,
            "exponent": 0,
        },
        "unique": b"" if high else bytes(bits // 8),
    })


def _ecc(curve: int, size: int, name_alg: int, policy: bytes, aes_bits: int, high: bool) -> bytes:
    return TPMT_PUBLIC.build({
        "type": ALG.ECC,
        "nameAlg": name_alg,
        "objectAttributes": int(EK_ATTRIBUTES | (A.USER_WITH_AUTH if high else 0)),
        "authPolicy": policy,
        "parameters": {
            "symmetric": {"algorithm": ALG.AES, "keyBits": aes_bits, "mode": ALG.CFB},
            "scheme": {"scheme": ALG.NULL, "details": None},
            "curveID": curve,
            "kdf": {"scheme": ALG.NULL, "details": None},
        },
        "unique": cs.Container(x=b"" if high else bytes(size), y=b"" if high else bytes(size)),
    })


EK_TEMPLATES: dict[EkKind, EkTemplate] = {
    EkKind.RSA2048: EkTemplate(EkKind.RSA2048, 0x01C00002, False, _rsa(2048, ALG.SHA256, POLICY_A_SHA256, 128, False)),
    EkKind.ECC_P256: EkTemplate(EkKind.ECC_P256, 0x01C0000A, False,
                                _ecc(ECC_CURVE.NIST_P256, 32, ALG.SHA256, POLICY_A_SHA256, 128, False)),
    EkKind.ECC_P384: EkTemplate(EkKind.ECC_P384, 0x01C00016, True,
                                _ecc(ECC_CURVE.NIST_P384, 48, ALG.SHA384, POLICY_B_SHA384, 256, True)),
    EkKind.ECC_P521: EkTemplate(EkKind.ECC_P521, 0x01C00018, True,
                                _ecc(ECC_CURVE.NIST_P521, 66, ALG.SHA512, POLICY_B_SHA512, 256, True)),
    EkKind.RSA3072: EkTemplate(EkKind.RSA3072, 0x01C0001C, True, _rsa(3072, ALG.SHA384, POLICY_B_SHA384, 256, True)),
    EkKind.RSA4096: EkTemplate(EkKind.RSA4096, 0x01C0001E, True, _rsa(4096, ALG.SHA384, POLICY_B_SHA384, 256, True)),
}


def ek_template(kind: EkKind | str) -> EkTemplate:
    """The EK template of ``kind``; ValueError for a name that is no EkKind."""
    return EK_TEMPLATES[EkKind(kind)]
