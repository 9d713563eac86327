"""A verifier's view of TPM2_Quote: parse the signed TPMS_ATTEST, check its TPMT_SIGNATURE.

Everything here is pure (no engine) and written with ``struct`` over the bytes: a verifier
runs it once per attestation, and construct's per-field overhead would dominate. Layouts are
TPM 2.0 Part 2 (big-endian): TPMS_ATTEST 10.12.12, TPMS_QUOTE_INFO 10.12.4,
TPML_PCR_SELECTION 10.9.7, TPMT_SIGNATURE 11.3.4.

The PCRs a quote covers are the ones in its *signed* pcrSelect; ``pcr_digest`` hashes claimed
values in exactly that order (bank by bank as listed, PCRs ascending), the way the TPM does.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from vtpm.constants import ALG, ST, TPM_GENERATED_VALUE, TPMA_OBJECT

MAX_PCRS = 24
_HASHLIB = {ALG.SHA1: "sha1", ALG.SHA256: "sha256", ALG.SHA384: "sha384", ALG.SHA512: "sha512"}
_CRYPTO_HASHES = {ALG.SHA1: hashes.SHA1(), ALG.SHA256: hashes.SHA256(), ALG.SHA384: hashes.SHA384(),
                  ALG.SHA512: hashes.SHA512()}
_DIGEST_SIZES = {ALG.SHA1: 20, ALG.SHA256: 32, ALG.SHA384: 48, ALG.SHA512: 64}
_PREHASHED = {alg: Prehashed(h) for alg, h in _CRYPTO_HASHES.items()}
_PKCS1 = padding.PKCS1v15()
_HEAD = struct.Struct(">IH")  # magic, type
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_CLOCK = struct.Struct(">QIIBQ")  # clock, resetCount, restartCount, safe, firmwareVersion
_SEL = struct.Struct(">HB")  # hash, sizeofSelect
# The attributes of an attestation key: a restricted signing key that never leaves its TPM.
AK_REQUIRED = TPMA_OBJECT.FIXED_TPM | TPMA_OBJECT.FIXED_PARENT | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT
AK_FORBIDDEN = TPMA_OBJECT.DECRYPT


class QuoteError(ValueError):
    """The quote, signature or key is malformed or does not verify; the message says which field."""


@dataclass(frozen=True)
class ClockInfo:
    """A quote's TPMS_CLOCK_INFO: a verifier compares the counts across quotes to see a reset or restart."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class Quote:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE, with the bytes that were signed."""

    raw: bytes
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_select: tuple[tuple[int, tuple[int, ...]], ...]  # (bank TPM_ALG_ID, PCR indices ascending), signed order
    pcr_digest: bytes


@dataclass(frozen=True)
class Signature:
    """A TPMT_SIGNATURE: RSASSA / RSAPSS (``sig``) or ECDSA (``r``, ``s``)."""

    sig_alg: int
    hash_alg: int
    sig: bytes = b""
    r: bytes = b""
    s: bytes = b""


class _Cursor:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def unpack(self, layout: struct.Struct, field: str) -> tuple[Any, ...]:
        end = self.pos + layout.size
        if end > len(self.data):
            raise QuoteError(f"{self.what}: truncated at {field} (offset {self.pos})")
        values = layout.unpack_from(self.data, self.pos)
        self.pos = end
        return values

    def take(self, size: int, field: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise QuoteError(f"{self.what}: {field} of {size} bytes overruns the structure (offset {self.pos})")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def tpm2b(self, field: str) -> bytes:
        (size,) = self.unpack(_U16, field + " size")
        return self.take(size, field)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise QuoteError(f"{self.what}: {len(self.data) - self.pos} bytes after the structure")


def unwrap_tpm2b(data: bytes, what: str) -> bytes:
    """The body of a TPM2B whose size must cover exactly the rest of ``data``."""
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
        raise QuoteError(f"{what}: size field does not match the data")
    return data[2:]


def parse_quote(attest: bytes) -> Quote:
    """Parse a TPMS_ATTEST (the body of a TPM2B_ATTEST) that must be a quote made by a TPM."""
    c = _Cursor(bytes(attest), "TPMS_ATTEST")
    magic, kind = c.unpack(_HEAD, "magic")
    if magic != TPM_GENERATED_VALUE:
        raise QuoteError(f"TPMS_ATTEST: magic 0x{magic:08x} is not TPM_GENERATED_VALUE")
    if kind != ST.ATTEST_QUOTE:
        raise QuoteError(f"TPMS_ATTEST: type 0x{kind:04x} is not TPM_ST_ATTEST_QUOTE")
    signer = c.tpm2b("qualifiedSigner")
    extra = c.tpm2b("extraData")
    clock, resets, restarts, safe, firmware = c.unpack(_CLOCK, "clockInfo")
    if safe > 1:
        raise QuoteError("TPMS_ATTEST: clockInfo.safe is not a TPMI_YES_NO")
    (count,) = c.unpack(_U32, "pcrSelect count")
    if count > 16:
        raise QuoteError(f"TPMS_ATTEST: pcrSelect lists {count} banks")
    selection = []
    seen = set()
    for _ in range(count):
        bank, size = c.unpack(_SEL, "pcrSelect entry")
        if bank not in _HASHLIB:
            raise QuoteError(f"TPMS_ATTEST: pcrSelect names unsupported bank 0x{bank:04x}")
        if bank in seen:
            raise QuoteError(f"TPMS_ATTEST: pcrSelect names bank 0x{bank:04x} twice")
        seen.add(bank)
        if size > 4:
            raise QuoteError(f"TPMS_ATTEST: sizeofSelect {size}")
        bits = int.from_bytes(c.take(size, "pcrSelect bitmap"), "little")
        if bits >> MAX_PCRS:
            raise QuoteError("TPMS_ATTEST: pcrSelect names a PCR above 23")
        selection.append((bank, tuple(i for i in range(size * 8) if bits >> i & 1)))
    pcr_digest = c.tpm2b("pcrDigest")
    c.done()
    return Quote(bytes(attest), magic, kind, signer, extra, ClockInfo(clock, resets, restarts, bool(safe)),
                 firmware, tuple(selection), pcr_digest)


_SIG_HEAD = struct.Struct(">HH")  # TPMT_SIGNATURE: sigAlg, hashAlg


def parse_signature(data: bytes) -> Signature:
    """A TPMT_SIGNATURE of RSASSA, RSAPSS or ECDSA."""
    c = _Cursor(bytes(data), "TPMT_SIGNATURE")
    sig_alg, hash_alg = c.unpack(_SIG_HEAD, "sigAlg")
    if hash_alg not in _HASHLIB:
        raise QuoteError(f"TPMT_SIGNATURE: unsupported hash 0x{hash_alg:04x}")
    if sig_alg in (ALG.RSASSA, ALG.RSAPSS):
        result = Signature(sig_alg, hash_alg, sig=c.tpm2b("signature"))
    elif sig_alg == ALG.ECDSA:
        result = Signature(sig_alg, hash_alg, r=c.tpm2b("signatureR"), s=c.tpm2b("signatureS"))
    else:
        raise QuoteError(f"TPMT_SIGNATURE: unsupported sigAlg 0x{sig_alg:04x}")
    c.done()
    return result


def verify_signature(public_key: Any, signature: Signature, message: bytes) -> None:
    """Check ``signature`` over ``message`` (the TPMS_ATTEST bytes) with an RSA or ECC public key."""
    digest = hashlib.new(_HASHLIB[signature.hash_alg], message).digest()
    prehashed = _PREHASHED[signature.hash_alg]
    try:
        if signature.sig_alg == ALG.RSASSA and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature.sig, digest, _PKCS1, prehashed)
        elif signature.sig_alg == ALG.RSAPSS and isinstance(public_key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(_CRYPTO_HASHES[signature.hash_alg]), salt_length=padding.PSS.AUTO)
            public_key.verify(signature.sig, digest, pss, prehashed)
        elif signature.sig_alg == ALG.ECDSA and isinstance(public_key, ec.EllipticCurvePublicKey):
            der = encode_dss_signature(int.from_bytes(signature.r, "big"), int.from_bytes(signature.s, "big"))
            public_key.verify(der, digest, ec.ECDSA(prehashed))
        else:
            raise QuoteError("the signature's algorithm does not fit the key")
    except InvalidSignature:
        raise QuoteError("the signature does not verify with the attestation key") from None


def pcr_digest(hash_alg: int, selection: tuple[tuple[int, tuple[int, ...]], ...],
               values: Mapping[int, Mapping[int, bytes]]) -> bytes:
    """The digest a TPM puts in pcrDigest for ``selection`` over ``values``; KeyError names a missing value."""
    h = hashlib.new(_HASHLIB[hash_alg])
    for bank, pcrs in selection:
        bank_values = values[bank]
        for index in pcrs:
            h.update(bank_values[index])
    return h.digest()


@dataclass(frozen=True)
class AttestationKey:
    """An AK's public area, parsed once: its name, attributes, signing scheme and key."""

    public_area: bytes  # TPMT_PUBLIC
    name: bytes  # nameAlg || H(TPMT_PUBLIC)
    attributes: int
    scheme: int
    scheme_hash: int
    key: Any

    @property
    def is_attestation_key(self) -> bool:
        """Whether the attributes are an AK's: fixedTPM, fixedParent, restricted, sign set, decrypt clear."""
        return self.attributes & AK_REQUIRED == AK_REQUIRED and not self.attributes & AK_FORBIDDEN

    def attribute_problems(self) -> list[str]:
        """What keeps the key from being an AK, one phrase per attribute (empty for an attestation key)."""
        problems = [f"{flag.name.lower()} is not set" for flag in (TPMA_OBJECT.FIXED_TPM, TPMA_OBJECT.FIXED_PARENT,
                                                                  TPMA_OBJECT.RESTRICTED, TPMA_OBJECT.SIGN_ENCRYPT)
                    if not self.attributes & flag]
        if self.attributes & AK_FORBIDDEN:
            problems.append("decrypt is set")
        return problems


def parse_public(tpm2b_public: bytes) -> AttestationKey:
    """Parse a TPM2B_PUBLIC of an RSA or ECC signing key (the attestation key)."""
    from vtpm.objects import LoadedObject, Public  # the engine's parser; only when a key is first seen

    area = unwrap_tpm2b(tpm2b_public, "TPM2B_PUBLIC")
    try:
        public = Public.parse(area)
        key = LoadedObject(public, None, 0, b"").public_key()
    except Exception as exc:  # construct and TpmError: one clear message
        raise QuoteError(f"TPM2B_PUBLIC: not a valid RSA or ECC public area ({type(exc).__name__})") from None
    if public.raw != area:
        raise QuoteError("TPM2B_PUBLIC: the public area is not in canonical form (trailing or extra bytes)")
    if public.name_alg not in _HASHLIB:
        raise QuoteError("TPM2B_PUBLIC: unsupported nameAlg")
    scheme = public.area.parameters.scheme
    scheme_alg = int(scheme.scheme)
    scheme_hash = int(scheme.details.hashAlg) if scheme.details is not None else ALG.NULL
    name = public.name_alg.to_bytes(2, "big") + hashlib.new(_HASHLIB[public.name_alg], area).digest()
    return AttestationKey(area, name, int(public.attributes), scheme_alg, scheme_hash, key)
