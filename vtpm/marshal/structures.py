"""TPM 2.0 wire structures (Part 2), declared once and used to parse and to build."""

from __future__ import annotations

import construct as cs

from vtpm.constants import ALG, RC
from vtpm.crypto import HASHES, MAX_DIGEST
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U8, U16, U32, U64, OneOf, Tpm2b, Tpm2bStruct

HASH_COUNT = len(HASHES)
PCR_SELECT_MAX = 3  # 24 PCRs
PCR_SELECT_MIN = 3  # the PC Client profile: a selection always covers PCRs 0-23
MAX_DIGEST_BUFFER = 1024
MAX_NV_BUFFER_SIZE = 1024
MAX_CAP_BUFFER = 1024
MAX_EVENT = 1024
NAME_MAX = MAX_DIGEST + 2

TPMI_ALG_HASH = OneOf(U16, HASHES, RC.HASH)
TPMI_ALG_HASH_NULL = OneOf(U16, [*HASHES, ALG.NULL], RC.HASH)

TPM2B_DIGEST = Tpm2b(MAX_DIGEST)
TPM2B_NONCE = TPM2B_DIGEST
TPM2B_AUTH = TPM2B_DIGEST
TPM2B_NAME = Tpm2b(NAME_MAX)
TPM2B_MAX_BUFFER = Tpm2b(MAX_DIGEST_BUFFER)
TPM2B_MAX_NV_BUFFER = Tpm2b(MAX_NV_BUFFER_SIZE)
TPM2B_EVENT = Tpm2b(MAX_EVENT)
TPM2B_SENSITIVE_DATA = Tpm2b(256)
TPM2B_DATA = Tpm2b(MAX_DIGEST + 2)  # sizeof(TPMT_HA)


def counted(element: cs.Construct, max_count: int) -> cs.Construct:
    """TPML_*: a UINT32 count (at most ``max_count``, else TPM_RC_SIZE) then the elements."""
    return cs.PrefixedArray(OneOf(U32, range(max_count + 1), RC.SIZE), element)


class PcrSelectBytes(cs.Construct):
    """sizeofSelect (UINT8, at most PCR_SELECT_MAX, else TPM_RC_VALUE) and the bitmap."""

    def _parse(self, stream, context, path):  # type: ignore[no-untyped-def]
        n = cs.stream_read(stream, 1, path)[0]
        if not PCR_SELECT_MIN <= n <= PCR_SELECT_MAX:
            raise TpmError(RC.VALUE)
        return cs.stream_read(stream, n, path)

    def _build(self, obj, stream, context, path):  # type: ignore[no-untyped-def]
        data = bytes(obj)
        cs.stream_write(stream, bytes([len(data)]) + data, 1 + len(data), path)
        return data

    def _sizeof(self, context, path):  # type: ignore[no-untyped-def]
        raise cs.SizeofError(path=path)


TPMS_PCR_SELECTION = cs.Struct("hash" / TPMI_ALG_HASH, "pcrSelect" / PcrSelectBytes())
TPMS_PCR_SELECT = cs.Struct("pcrSelect" / PcrSelectBytes())
TPML_PCR_SELECTION = counted(TPMS_PCR_SELECTION, HASH_COUNT)
TPML_DIGEST = counted(TPM2B_DIGEST, 8)


class TpmtHa(cs.Construct):
    """TPMT_HA: a hash algorithm and a digest of exactly that algorithm's size."""

    def __init__(self, allow_null: bool = False) -> None:
        super().__init__()
        self.allow_null = allow_null

    def _parse(self, stream, context, path):  # type: ignore[no-untyped-def]
        alg = int.from_bytes(cs.stream_read(stream, 2, path), "big")
        if alg == ALG.NULL and self.allow_null:
            return cs.Container(hashAlg=alg, digest=b"")
        if alg not in HASHES:
            raise TpmError(RC.HASH)
        return cs.Container(hashAlg=alg, digest=cs.stream_read(stream, HASHES[alg].size, path))

    def _build(self, obj, stream, context, path):  # type: ignore[no-untyped-def]
        data = int(obj["hashAlg"]).to_bytes(2, "big") + bytes(obj["digest"])
        cs.stream_write(stream, data, len(data), path)
        return obj

    def _sizeof(self, context, path):  # type: ignore[no-untyped-def]
        raise cs.SizeofError(path=path)


TPMT_HA = TpmtHa()
TPML_DIGEST_VALUES = counted(TPMT_HA, HASH_COUNT)

TPMS_NV_PUBLIC = cs.Struct(
    "nvIndex" / U32,
    "nameAlg" / TPMI_ALG_HASH,
    "attributes" / U32,
    "authPolicy" / TPM2B_DIGEST,
    "dataSize" / U16,
)
TPM2B_NV_PUBLIC = Tpm2bStruct(TPMS_NV_PUBLIC)

TPMS_CLOCK_INFO = cs.Struct("clock" / U64, "resetCount" / U32, "restartCount" / U32, "safe" / U8)
TPMS_TIME_INFO = cs.Struct("time" / U64, "clockInfo" / TPMS_CLOCK_INFO)
TPMT_TK_HASHCHECK = cs.Struct("tag" / U16, "hierarchy" / U32, "digest" / TPM2B_DIGEST)

TPMS_AUTH_COMMAND = cs.Struct(
    "sessionHandle" / U32, "nonce" / TPM2B_NONCE, "sessionAttributes" / U8, "hmac" / TPM2B_AUTH
)
TPMS_AUTH_RESPONSE = cs.Struct("nonce" / TPM2B_NONCE, "sessionAttributes" / U8, "hmac" / TPM2B_AUTH)

# Capability lists (responses)
TPMS_ALG_PROPERTY = cs.Struct("alg" / U16, "algProperties" / U32)
TPMS_TAGGED_PROPERTY = cs.Struct("property" / U32, "value" / U32)
TPMS_TAGGED_PCR_SELECT = cs.Struct("tag" / U32, "pcrSelect" / PcrSelectBytes())
TPML_ALG_PROPERTY = cs.PrefixedArray(U32, TPMS_ALG_PROPERTY)
TPML_HANDLE = cs.PrefixedArray(U32, U32)
TPML_CCA = cs.PrefixedArray(U32, U32)
TPML_CC = cs.PrefixedArray(U32, U32)
TPML_TAGGED_TPM_PROPERTY = cs.PrefixedArray(U32, TPMS_TAGGED_PROPERTY)
TPML_TAGGED_PCR_PROPERTY = cs.PrefixedArray(U32, TPMS_TAGGED_PCR_SELECT)
TPML_ECC_CURVE = cs.PrefixedArray(U32, U16)
TPML_PCR_SELECTION_OUT = cs.PrefixedArray(U32, TPMS_PCR_SELECTION)

# Symmetric definitions (TestParms and later object commands)
TPMT_SYM_DEF_OBJECT = cs.Struct(
    "algorithm" / U16,
    "keyBits" / cs.If(cs.this.algorithm != ALG.NULL, U16),
    "mode" / cs.If(cs.this.algorithm != ALG.NULL, U16),
)
TPMT_SCHEME = cs.Struct(
    "scheme" / U16,
    "details" / cs.If(cs.this.scheme != ALG.NULL, U16),
)
