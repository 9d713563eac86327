"""EK certificates per the TCG EK Credential Profile for TPM 2.0.

`cryptography` builds the certificate; the one structure it cannot express, the
subjectDirectoryAttributes extension carrying tpmSpecification, is encoded with
pyasn1. The subject is empty, so the subjectAltName (a directoryName with
tpmManufacturer, tpmModel and tpmVersion) is critical, as RFC 5280 requires.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ObjectIdentifier
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import namedtype, univ, char

TCG_TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
TCG_TPM_MODEL = ObjectIdentifier("2.23.133.2.2")
TCG_TPM_VERSION = ObjectIdentifier("2.23.133.2.3")
TCG_TPM_SPECIFICATION = "2.23.133.2.16"
TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")
SUBJECT_DIRECTORY_ATTRIBUTES = ObjectIdentifier("2.5.29.9")
# TCG EK Credential Profile certificate policy (verifiedTPMResidency)
TCG_CAP_VERIFIED_TPM_RESIDENCY = ObjectIdentifier("2.23.133.11.1.1")
EK_VALIDITY = datetime.timedelta(days=365 * 20)


class TpmSpecification(univ.Sequence):
    """TPMSpecification ::= SEQUENCE { family UTF8String, level INTEGER, revision INTEGER }"""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("family", char.UTF8String()),
        namedtype.NamedType("level", univ.Integer()),
        namedtype.NamedType("revision", univ.Integer()),
    )


class Attribute(univ.Sequence):
    """Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET OF ANY } (X.501, as RFC 5280 uses it)"""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("type", univ.ObjectIdentifier()),
        namedtype.NamedType("values", univ.SetOf(componentType=univ.Any())),
    )


class SubjectDirectoryAttributes(univ.SequenceOf):
    """SubjectDirectoryAttributes ::= SEQUENCE SIZE (1..MAX) OF Attribute (RFC 5280 4.2.1.8)"""

    componentType = Attribute()


@dataclass(frozen=True)
class TpmIdentity:
    """What the certificate says about the TPM (Part 2 TPM_PT_* values as the profile formats them)."""

    manufacturer: int  # TPM_PT_MANUFACTURER
    model: str
    version: int  # TPM_PT_FIRMWARE_VERSION_1
    family: str = "2.0"
    level: int = 0
    revision: int = 164

    @property
    def manufacturer_id(self) -> str:
        """TPM_PT_MANUFACTURER as the EK profile writes it in the SAN: ``id:`` and 8 hex digits."""
        return f"id:{self.manufacturer:08X}"

    @property
    def version_id(self) -> str:
        """The firmware version as the EK profile writes it in the SAN: ``id:`` and 8 hex digits."""
        return f"id:{self.version:08X}"


def subject_directory_attributes(identity: TpmIdentity) -> bytes:
    """The DER of the subjectDirectoryAttributes extension: the TPM specification (family, level, revision)
    that the EK credential profile asks of an EK certificate."""
    spec = TpmSpecification()
    spec["family"] = identity.family
    spec["level"] = identity.level
    spec["revision"] = identity.revision
    attribute = Attribute()
    attribute["type"] = univ.ObjectIdentifier(TCG_TPM_SPECIFICATION)
    attribute["values"].append(univ.Any(der_encoder.encode(spec)))
    attributes = SubjectDirectoryAttributes()
    attributes.append(attribute)
    return der_encoder.encode(attributes)


def parse_tpm_specification(extension_value: bytes) -> tuple[str, int, int] | None:
    """(family, level, revision) from a subjectDirectoryAttributes extension, if present."""
    attributes, _ = der_decoder.decode(extension_value, asn1Spec=SubjectDirectoryAttributes())
    for attribute in attributes:
        if str(attribute["type"]) == TCG_TPM_SPECIFICATION:
            spec, _ = der_decoder.decode(bytes(attribute["values"][0]), asn1Spec=TpmSpecification())
            return str(spec["family"]), int(spec["level"]), int(spec["revision"])
    return None


def tcg_san(identity: TpmIdentity) -> x509.SubjectAlternativeName:
    """The EK certificate's subjectAltName: a directoryName with the TCG manufacturer, model and version
    attributes, which is how the EK profile names the TPM (the subject itself is empty)."""
    directory = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(TCG_TPM_MANUFACTURER, identity.manufacturer_id)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(TCG_TPM_MODEL, identity.model)]),
        x509.RelativeDistinguishedName([x509.NameAttribute(TCG_TPM_VERSION, identity.version_id)]),
    ])
    return x509.SubjectAlternativeName([x509.DirectoryName(directory)])


def build_ek_certificate(
    ek_public: Any,
    identity: TpmIdentity,
    issuer: x509.Certificate,
    issuer_key: Any,
    serial: int,
    *,
    not_before: datetime.datetime | None = None,
    validity: datetime.timedelta = EK_VALIDITY,
) -> x509.Certificate:
    """An EK certificate for ``ek_public`` (RSA or ECC) signed by ``issuer_key``."""
    start = not_before or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    if isinstance(ek_public, rsa.RSAPublicKey):
        usage = dict(key_encipherment=True, key_agreement=False)
    elif isinstance(ek_public, ec.EllipticCurvePublicKey):
        usage = dict(key_encipherment=False, key_agreement=True)
    else:
        raise ValueError("an EK is an RSA or an ECC key")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer.subject)
        .public_key(ek_public)
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(min(start + validity, issuer.not_valid_after_utc))  # never outlives its issuer
        .add_extension(tcg_san(identity), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, data_encipherment=False,
                                     key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
                                     **usage), critical=True)
        .add_extension(x509.ExtendedKeyUsage([TCG_KP_EK_CERTIFICATE]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        .add_extension(x509.CertificatePolicies([x509.PolicyInformation(TCG_CAP_VERIFIED_TPM_RESIDENCY, None)]),
                       critical=False)
        .add_extension(x509.UnrecognizedExtension(SUBJECT_DIRECTORY_ATTRIBUTES, subject_directory_attributes(identity)),
                       critical=False)
    )
    algorithm = hashes.SHA384() if isinstance(issuer_key, ec.EllipticCurvePrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)
