"""The DER pieces of TPM2_CertifyX509 (Part 3 18.8, the reference implementation's X509_spt,
X509_RSA, X509_ECC and TpmAsn1): reading the caller's partial certificate, and writing the
algorithm identifiers, the subject public key, the serial number and the version that the TPM
adds to make a TBSCertificate.

Only the definite-length DER the reference implementation reads is accepted: one-byte tags,
lengths of at most two octets.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtpm.constants import ALG, ECC_CURVE, RC, TPMA_OBJECT
from vtpm.errors import TpmError

SEQUENCE = 0x30
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
CONTEXT_0 = 0xA0  # [0] constructed: version, hashAlgorithm
EXTENSIONS = 0xA3  # [3] constructed: the extensions of a TBSCertificate

# OIDs as complete DER TLVs (tag, length, value)
OID_RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d010101")
OID_RSAPSS = bytes.fromhex("06092a864886f70d01010a")
OID_MGF1 = bytes.fromhex("06092a864886f70d010108")
OID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
OID_KEY_USAGE = bytes.fromhex("0603551d0f")
OID_TCG_TPMA_OBJECT = bytes.fromhex("06076781050a010101")
HASH_OIDS = {
    ALG.SHA1: bytes.fromhex("06052b0e03021a"),
    ALG.SHA256: bytes.fromhex("0609608648016503040201"),
    ALG.SHA384: bytes.fromhex("0609608648016503040202"),
    ALG.SHA512: bytes.fromhex("0609608648016503040203"),
}
RSASSA_OIDS = {
    ALG.SHA1: bytes.fromhex("06092a864886f70d010105"),
    ALG.SHA256: bytes.fromhex("06092a864886f70d01010b"),
    ALG.SHA384: bytes.fromhex("06092a864886f70d01010c"),
    ALG.SHA512: bytes.fromhex("06092a864886f70d01010d"),
}
ECDSA_OIDS = {
    ALG.SHA1: bytes.fromhex("06072a8648ce3d0401"),
    ALG.SHA256: bytes.fromhex("06082a8648ce3d040302"),
    ALG.SHA384: bytes.fromhex("06082a8648ce3d040303"),
    ALG.SHA512: bytes.fromhex("06082a8648ce3d040304"),
}
CURVE_OIDS = {
    ECC_CURVE.NIST_P192: bytes.fromhex("06082a8648ce3d030101"),
    ECC_CURVE.NIST_P224: bytes.fromhex("06052b81040021"),
    ECC_CURVE.NIST_P256: bytes.fromhex("06082a8648ce3d030107"),
    ECC_CURVE.NIST_P384: bytes.fromhex("06052b81040022"),
    ECC_CURVE.NIST_P521: bytes.fromhex("06052b81040023"),
    ECC_CURVE.SM2_P256: bytes.fromhex("06082a811ccf5501822d"),  # the reference's OID; the BN curves have none
}
SERIAL_NUMBER_SIZE = 20

# keyUsage bits (X.509 bit 0 is the most significant bit of the left-justified value)
DIGITAL_SIGNATURE, NON_REPUDIATION, KEY_ENCIPHERMENT, DATA_ENCIPHERMENT, KEY_AGREEMENT = range(5)
KEY_CERT_SIGN, CRL_SIGN, ENCIPHER_ONLY, DECIPHER_ONLY = range(5, 9)
USAGE_NEEDS_SIGN = {DIGITAL_SIGNATURE, KEY_CERT_SIGN, CRL_SIGN}
USAGE_NEEDS_DECRYPT = {KEY_ENCIPHERMENT, DATA_ENCIPHERMENT, KEY_AGREEMENT, ENCIPHER_ONLY, DECIPHER_ONLY}


# ----------------------------------------------------------------------------- writing


def length(n: int) -> bytes:
    """A DER length: short form below 128, else one or two length octets (all this TPM writes)."""
    if n < 0x80:
        return bytes([n])
    if n < 0x100:
        return bytes([0x81, n])
    return bytes([0x82]) + n.to_bytes(2, "big")


def tlv(tag: int, value: bytes) -> bytes:
    """A DER element: one-byte tag, length, value."""
    return bytes([tag]) + length(len(value)) + value


def integer(value: bytes) -> bytes:
    """A positive INTEGER from big-endian bytes (leading zeros dropped, a zero added before a high bit)."""
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return tlv(INTEGER, value)


def bit_string(value: bytes) -> bytes:
    """A DER BIT STRING of whole octets (no unused bits)."""
    return tlv(BIT_STRING, b"\x00" + value)


def algorithm_identifier(oid: bytes) -> bytes:
    """An AlgorithmIdentifier with the OID ``oid`` and NULL parameters."""
    return tlv(SEQUENCE, oid + tlv(NULL, b""))


def pss_salt_size(hash_size: int, key_bytes: int) -> int:
    """The RSASSA-PSS salt length the reference implementation uses: the hash size, capped at what the key leaves room
    for."""
    return max(0, min(hash_size, key_bytes - hash_size - 2))


def signing_algorithm(key_type: int, scheme: int, hash_alg: int, key_bytes: int, hash_size: int) -> bytes | None:
    """The signature AlgorithmIdentifier the TPM can write for a scheme, or None."""
    if hash_alg not in HASH_OIDS:
        return None
    if key_type == ALG.RSA and scheme == ALG.RSASSA:
        return algorithm_identifier(RSASSA_OIDS[hash_alg])
    if key_type == ALG.RSA and scheme == ALG.RSAPSS:
        if hash_alg == ALG.SHA1:
            return algorithm_identifier(OID_RSAPSS)
        hash_id = algorithm_identifier(HASH_OIDS[hash_alg])
        params = (tlv(CONTEXT_0, hash_id) + tlv(CONTEXT_0 + 1, tlv(SEQUENCE, OID_MGF1 + hash_id))
                  + tlv(CONTEXT_0 + 2, integer(pss_salt_size(hash_size, key_bytes).to_bytes(4, "big"))))
        return tlv(SEQUENCE, OID_RSAPSS + tlv(SEQUENCE, params))
    if key_type == ALG.ECC and scheme == ALG.ECDSA:
        return tlv(SEQUENCE, ECDSA_OIDS[hash_alg])
    return None


def rsa_public_key(modulus: bytes, exponent: int) -> bytes:
    """The SubjectPublicKeyInfo of an RSA key (exponent 0 means the default 65537)."""
    key = tlv(SEQUENCE, integer(modulus) + integer((exponent or 65537).to_bytes(4, "big")))
    return tlv(SEQUENCE, algorithm_identifier(OID_RSA_ENCRYPTION) + bit_string(key))


def ecc_public_key(curve_id: int, x: bytes, y: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo of an ECC point (uncompressed), or None for a curve without an OID here."""
    oid = CURVE_OIDS.get(curve_id)
    if oid is None:
        return None
    return tlv(SEQUENCE, tlv(SEQUENCE, OID_EC_PUBLIC_KEY + oid) + bit_string(b"\x04" + x + y))


# ----------------------------------------------------------------------------- reading


@dataclass
class Element:
    """One DER element found in a buffer: its tag and where its tag, value and end lie."""
    tag: int
    start: int  # offset of the tag
    value_start: int
    end: int

    def raw(self, data: bytes) -> bytes:
        """The whole element (tag, length and value) from ``data``."""
        return data[self.start : self.end]

    def value(self, data: bytes) -> bytes:
        """The element's value octets from ``data``."""
        return data[self.value_start : self.end]


def next_element(data: bytes, offset: int, end: int) -> Element:
    """The TLV at ``offset``; ValueError when it is not DER the TPM reads."""
    if offset >= end:
        raise ValueError("no element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tag")
    pos = offset + 1
    if pos >= end:
        raise ValueError("no length")
    first = data[pos]
    pos += 1
    if first == 0x81:
        size = data[pos]
        pos += 1
    elif first == 0x82:
        if pos + 2 > end or data[pos] >= 0x80:
            raise ValueError("length")
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
    elif first < 0x80:
        size = first
    else:
        raise ValueError("length")
    if pos + size > end:
        raise ValueError("overrun")
    return Element(tag, offset, pos, pos + size)


def children(data: bytes, element: Element) -> list[Element]:
    """The elements inside a constructed ``element``; ValueError when one is not DER the TPM reads."""
    items, offset = [], element.value_start
    while offset < element.end:
        item = next_element(data, offset, element.end)
        items.append(item)
        offset = item.end
    return items


def bit_string_value(data: bytes, element: Element) -> int:
    """A BIT STRING of up to 32 bits, left-justified in 32 bits (the reference's ASN1GetBitStringValue)."""
    if element.tag != BIT_STRING or element.end - element.value_start < 1:
        raise ValueError("not a bit string")
    unused = data[element.value_start]
    body = data[element.value_start + 1 : element.end]
    if unused >= 8 or (not body and unused) or len(body) > 4:
        raise ValueError("bit string")
    bits = 8 * len(body) - unused
    value = int.from_bytes(body, "big") >> unused if body else 0
    return value << (32 - bits) if bits else 0


def extension_bits(data: bytes, extensions: list[Element], oid: bytes) -> int | None:
    """The bit string value of the extension named by ``oid`` (in its OCTET STRING), or None."""
    for extension in extensions:
        if extension.tag != SEQUENCE:
            raise ValueError("extension")
        if data[extension.value_start : extension.value_start + len(oid)] != oid:
            continue
        for item in children(data, extension):
            if item.tag == OCTET_STRING:
                return bit_string_value(data, next_element(data, item.value_start, item.end))
        raise ValueError("extension without a value")
    return None


def usage_bits(value: int) -> set[int]:
    """The KeyUsage bit numbers set in a BIT STRING value read as 32 bits, most significant first (bit 0 is
    digitalSignature)."""
    return {bit for bit in range(32) if value >> (31 - bit) & 1}


def check_extensions(data: bytes, element: Element, attributes: int) -> None:
    """The TPMA_OBJECT extension (if any) must be the object's attributes (TPM_RC_ATTRIBUTES), and the
    required keyUsage must fit them (TPM_RC_VALUE for the partial certificate)."""
    try:
        (inner,) = children(data, element)
        if inner.tag != SEQUENCE:
            raise ValueError("extensions")
        extensions = children(data, inner)
        tpma = extension_bits(data, extensions, OID_TCG_TPMA_OBJECT)
        usage = extension_bits(data, extensions, OID_KEY_USAGE)
    except ValueError:
        raise TpmError(RC.VALUE, param=3) from None
    if tpma is not None and tpma != attributes:
        # libtpms adds the objectHandle's number to an error that already carries one: it answers
        # TPM_RC_ATTRIBUTES for handle 2; so does this TPM, for the same bytes.
        raise TpmError(RC.ATTRIBUTES, handle=2)
    if usage is None:
        raise TpmError(RC.VALUE, param=3)
    bits = usage_bits(usage)
    A = TPMA_OBJECT
    if ((bits & USAGE_NEEDS_SIGN and not attributes & A.SIGN_ENCRYPT)
            or (bits & USAGE_NEEDS_DECRYPT and not attributes & A.DECRYPT)
            or (NON_REPUDIATION in bits and not attributes & A.FIXED_TPM)
            or (KEY_AGREEMENT in bits and not attributes & A.RESTRICTED)):
        raise TpmError(RC.VALUE, param=3)


@dataclass
class Partial:
    """The caller's part of a TBSCertificate: [signature,] issuer, validity, subject, extensions."""

    signature: bytes
    issuer: bytes
    validity: bytes
    subject: bytes
    extensions: Element


def parse_partial(data: bytes) -> Partial:
    """Split the partialCertificate of TPM2_CertifyX509 into its parts; TPM_RC_SIZE when it is not one SEQUENCE filling
    the buffer, TPM_RC_VALUE (parameter 3) when it does not hold 3 or 4 SEQUENCEs and one extensions element."""
    if not data:
        raise TpmError(RC.VALUE, param=3)
    try:
        outer = next_element(data, 0, len(data))
    except ValueError:
        raise TpmError(RC.SIZE, param=3) from None
    if outer.tag != SEQUENCE or outer.end != len(data):
        raise TpmError(RC.SIZE, param=3)
    sequences: list[bytes] = []
    extensions: Element | None = None
    try:
        for item in children(data, outer):
            if item.tag == SEQUENCE:
                sequences.append(item.raw(data))
                if len(sequences) > 4:
                    break
            elif item.tag == EXTENSIONS:
                if extensions is not None:
                    raise TpmError(RC.VALUE, param=3)
                extensions = item
            else:
                raise TpmError(RC.VALUE, param=3)
    except ValueError:
        raise TpmError(RC.VALUE, param=3) from None
    if not 3 <= len(sequences) <= 4 or extensions is None:
        raise TpmError(RC.VALUE, param=3)
    signature = sequences[0] if len(sequences) == 4 else b""
    issuer, validity, subject = sequences[-3:]
    return Partial(signature, issuer, validity, subject, extensions)
