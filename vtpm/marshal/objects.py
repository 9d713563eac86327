"""Wire types of TPM objects (Part 2, sections 11-12): public and sensitive areas,
creation data, tickets, signatures and attestation structures."""

from __future__ import annotations

import construct as cs

from vtpm.constants import ALG
from vtpm.marshal.primitives import U8, U16, U32, U64, Tpm2b, Tpm2bStruct
from vtpm.marshal.structures import (
    TPM2B_AUTH,
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_NAME,
    TPM2B_SENSITIVE_DATA,
    TPML_PCR_SELECTION,
    TPMS_CLOCK_INFO,
)

MAX_RSA_KEY_BYTES = 512
MAX_ECC_KEY_BYTES = 80  # BN P-638 (libtpms 0.9 implements it)

TPM2B_PUBLIC_KEY_RSA = Tpm2b(MAX_RSA_KEY_BYTES)
TPM2B_PRIVATE_KEY_RSA = Tpm2b(MAX_RSA_KEY_BYTES // 2)
TPM2B_ECC_PARAMETER = Tpm2b(MAX_ECC_KEY_BYTES)
TPM2B_SYM_KEY = Tpm2b(32)
TPM2B_ENCRYPTED_SECRET = Tpm2b(512)
TPM2B_ID_OBJECT = Tpm2b(2 + 64 + 64 + 16)
TPM2B_PRIVATE = Tpm2b(2048)
TPM2B_MAX_BUFFER_SYM = Tpm2b(1024)
TPM2B_IV = Tpm2b(16)

TPMS_ECC_POINT = cs.Struct("x" / TPM2B_ECC_PARAMETER, "y" / TPM2B_ECC_PARAMETER)
TPM2B_ECC_POINT = Tpm2bStruct(TPMS_ECC_POINT)

TPMT_SYM_DEF_OBJECT = cs.Struct(
    "algorithm" / U16,
    "keyBits" / cs.If(cs.this.algorithm != ALG.NULL, U16),
    "mode" / cs.If(cs.this.algorithm != ALG.NULL, U16),
)
_HASH_ONLY = cs.Struct("hashAlg" / U16)
TPMT_KEYEDHASH_SCHEME = cs.Struct(
    "scheme" / U16,
    "details" / cs.Switch(cs.this.scheme, {ALG.HMAC: _HASH_ONLY, ALG.XOR: cs.Struct("hashAlg" / U16, "kdf" / U16)}),
)
# TPMT_RSA_SCHEME, TPMT_ECC_SCHEME, TPMT_SIG_SCHEME, TPMT_RSA_DECRYPT: a scheme, then its hash (if any)
_NO_DETAILS = {ALG.NULL: cs.Pass, ALG.RSAES: cs.Pass}
TPMT_ASYM_SCHEME = cs.Struct(
    "scheme" / U16,
    "details" / cs.Switch(
        cs.this.scheme,
        {**_NO_DETAILS, ALG.ECDAA: cs.Struct("hashAlg" / U16, "count" / U16)},
        default=_HASH_ONLY,
    ),
)
TPMT_KDF_SCHEME = cs.Struct("scheme" / U16, "details" / cs.If(cs.this.scheme != ALG.NULL, _HASH_ONLY))

TPMS_RSA_PARMS = cs.Struct(
    "symmetric" / TPMT_SYM_DEF_OBJECT, "scheme" / TPMT_ASYM_SCHEME, "keyBits" / U16, "exponent" / U32
)
TPMS_ECC_PARMS = cs.Struct(
    "symmetric" / TPMT_SYM_DEF_OBJECT, "scheme" / TPMT_ASYM_SCHEME, "curveID" / U16, "kdf" / TPMT_KDF_SCHEME
)
TPMS_KEYEDHASH_PARMS = cs.Struct("scheme" / TPMT_KEYEDHASH_SCHEME)
TPMS_SYMCIPHER_PARMS = cs.Struct("sym" / TPMT_SYM_DEF_OBJECT)

TPMT_PUBLIC = cs.Struct(
    "type" / U16,
    "nameAlg" / U16,
    "objectAttributes" / U32,
    "authPolicy" / TPM2B_DIGEST,
    "parameters" / cs.Switch(
        cs.this.type,
        {ALG.RSA: TPMS_RSA_PARMS, ALG.ECC: TPMS_ECC_PARMS, ALG.KEYEDHASH: TPMS_KEYEDHASH_PARMS,
         ALG.SYMCIPHER: TPMS_SYMCIPHER_PARMS},
        default=cs.Error,
    ),
    "unique" / cs.Switch(
        cs.this.type,
        {ALG.RSA: TPM2B_PUBLIC_KEY_RSA, ALG.ECC: TPMS_ECC_POINT, ALG.KEYEDHASH: TPM2B_DIGEST,
         ALG.SYMCIPHER: TPM2B_DIGEST},
        default=cs.Error,
    ),
)
TPM2B_PUBLIC = Tpm2bStruct(TPMT_PUBLIC)

TPMT_SENSITIVE = cs.Struct(
    "sensitiveType" / U16,
    "authValue" / TPM2B_AUTH,
    "seedValue" / TPM2B_DIGEST,
    "sensitive" / cs.Switch(
        cs.this.sensitiveType,
        {ALG.RSA: TPM2B_PRIVATE_KEY_RSA, ALG.ECC: TPM2B_ECC_PARAMETER, ALG.KEYEDHASH: TPM2B_SENSITIVE_DATA,
         ALG.SYMCIPHER: TPM2B_SYM_KEY},
        default=cs.Error,
    ),
)
TPM2B_SENSITIVE = Tpm2bStruct(TPMT_SENSITIVE)

TPMS_SENSITIVE_CREATE = cs.Struct("userAuth" / TPM2B_AUTH, "data" / TPM2B_SENSITIVE_DATA)
TPM2B_SENSITIVE_CREATE = Tpm2bStruct(TPMS_SENSITIVE_CREATE)

TPMS_CREATION_DATA = cs.Struct(
    "pcrSelect" / TPML_PCR_SELECTION,
    "pcrDigest" / TPM2B_DIGEST,
    "locality" / U8,
    "parentNameAlg" / U16,
    "parentName" / TPM2B_NAME,
    "parentQualifiedName" / TPM2B_NAME,
    "outsideInfo" / TPM2B_DATA,
)
TPM2B_CREATION_DATA = Tpm2bStruct(TPMS_CREATION_DATA)

TPMT_TK = cs.Struct("tag" / U16, "hierarchy" / U32, "digest" / TPM2B_DIGEST)  # every TPMT_TK_*

_ECC_SIGNATURE = cs.Struct("hash" / U16, "signatureR" / TPM2B_ECC_PARAMETER, "signatureS" / TPM2B_ECC_PARAMETER)
TPMT_SIGNATURE = cs.Struct(
    "sigAlg" / U16,
    "signature" / cs.Switch(
        cs.this.sigAlg,
        {
            ALG.RSASSA: cs.Struct("hash" / U16, "sig" / TPM2B_PUBLIC_KEY_RSA),
            ALG.RSAPSS: cs.Struct("hash" / U16, "sig" / TPM2B_PUBLIC_KEY_RSA),
            ALG.ECDSA: _ECC_SIGNATURE,
            ALG.ECDAA: _ECC_SIGNATURE,
            ALG.ECSCHNORR: _ECC_SIGNATURE,
            ALG.SM2: _ECC_SIGNATURE,
            ALG.HMAC: cs.Struct("hashAlg" / U16, "digest" / cs.Bytes(lambda ctx: {4: 20, 11: 32, 12: 48, 13: 64}.get(ctx.hashAlg, 0))),
            ALG.NULL: cs.Pass,
        },
        default=cs.Error,
    ),
)

TPMS_QUOTE_INFO = cs.Struct("pcrSelect" / TPML_PCR_SELECTION, "pcrDigest" / TPM2B_DIGEST)
TPMS_CERTIFY_INFO = cs.Struct("name" / TPM2B_NAME, "qualifiedName" / TPM2B_NAME)
TPMS_CREATION_INFO = cs.Struct("objectName" / TPM2B_NAME, "creationHash" / TPM2B_DIGEST)
TPMS_TIME_ATTEST_INFO = cs.Struct(
    "time" / cs.Struct("time" / U64, "clockInfo" / TPMS_CLOCK_INFO), "firmwareVersion" / U64
)
TPMS_NV_CERTIFY_INFO = cs.Struct("indexName" / TPM2B_NAME, "offset" / U16, "nvContents" / Tpm2b(2048))
TPMS_COMMAND_AUDIT_INFO = cs.Struct(
    "auditCounter" / U64, "digestAlg" / U16, "auditDigest" / TPM2B_DIGEST, "commandDigest" / TPM2B_DIGEST
)
TPMS_SESSION_AUDIT_INFO = cs.Struct("exclusiveSession" / U8, "sessionDigest" / TPM2B_DIGEST)

TPMS_ATTEST = cs.Struct(
    "magic" / U32,
    "type" / U16,
    "qualifiedSigner" / TPM2B_NAME,
    "extraData" / TPM2B_DATA,
    "clockInfo" / TPMS_CLOCK_INFO,
    "firmwareVersion" / U64,
    "attested" / cs.Switch(
        cs.this.type,
        {0x8018: TPMS_QUOTE_INFO, 0x8017: TPMS_CERTIFY_INFO, 0x801A: TPMS_CREATION_INFO,
         0x8019: TPMS_TIME_ATTEST_INFO, 0x8014: TPMS_NV_CERTIFY_INFO, 0x8015: TPMS_COMMAND_AUDIT_INFO,
         0x8016: TPMS_SESSION_AUDIT_INFO},
        default=cs.Error,
    ),
)
TPM2B_ATTEST = Tpm2bStruct(TPMS_ATTEST)

TPMS_CONTEXT = cs.Struct(
    "sequence" / U64, "savedHandle" / U32, "hierarchy" / U32, "contextBlob" / Tpm2b(4096)
)

__all__ = [name for name in dir() if name.startswith("TPM")]
