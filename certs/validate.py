"""Validating an EK certificate: is this the certificate of this TPM's EK, issued by someone we trust?

Path building is done here (issuer name + signature, up to a trust anchor)
rather than with a web PKI verifier: EK certificates have empty subjects,
critical directoryName SANs and the TCG EKU, which such verifiers reject.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certs.ek import TCG_KP_EK_CERTIFICATE, TCG_TPM_MANUFACTURER, TCG_TPM_MODEL, TCG_TPM_VERSION

MAX_CHAIN = 6


class EkCertificateError(Exception):
    """The EK certificate is not acceptable; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_validity(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise EkCertificateError(f"{what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise EkCertificateError(f"{what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_revocation(cert: x509.Certificate, issuer: x509.Certificate,
                      crls: list[x509.CertificateRevocationList]) -> None:
    for crl in crls:
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            what = "the EK certificate" if not cert.subject else f"'{cert.subject.rfc4514_string()}'"
            raise EkCertificateError(f"{what} (serial {cert.serial_number:x}) was revoked on "
                                     f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC")


def tcg_fields(cert: x509.Certificate) -> dict[str, str]:
    """tpmManufacturer, tpmModel and tpmVersion from the SAN directoryName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise EkCertificateError("the certificate has no subjectAltName with the TPM's identity") from None
    fields: dict[str, str] = {}
    for name in san.get_values_for_type(x509.DirectoryName):
        for attribute in name:
            for oid, label in ((TCG_TPM_MANUFACTURER, "manufacturer"), (TCG_TPM_MODEL, "model"), (TCG_TPM_VERSION, "version")):
                if attribute.oid == oid:
                    fields[label] = str(attribute.value)
    missing = {"manufacturer", "model", "version"} - set(fields)
    if missing:
        raise EkCertificateError(f"the subjectAltName lacks the TCG field(s) {', '.join(sorted(missing))}")
    return fields


def _issuer_of(cert: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def validate_ek_certificate(
    cert: x509.Certificate,
    ek_public: Any,
    trust_store: Iterable[x509.Certificate],
    *,
    intermediates: Iterable[x509.Certificate] = (),
    crls: Iterable[x509.CertificateRevocationList] = (),
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Check ``cert`` against the EK and the trust anchors; return what it certifies.

    Raises EkCertificateError naming the first problem: a key that is not the EK,
    a missing EK EKU or TCG field, a date outside the validity, a serial on one of
    ``crls`` (checked only when the CRL carries the issuer's signature), or no path
    to a trusted issuer.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    anchors = list(trust_store)
    pool = anchors + list(intermediates)
    revocation_lists = list(crls)
    if _spki(cert.public_key()) != _spki(ek_public):
        raise EkCertificateError("the certificate's public key is not the TPM's EK")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise EkCertificateError("the certificate has no extended key usage (tcg-kp-EKCertificate)") from None
    if TCG_KP_EK_CERTIFICATE not in eku:
        raise EkCertificateError("the extended key usage does not include tcg-kp-EKCertificate (2.23.133.8.1)")
    fields = tcg_fields(cert)
    _check_validity(cert, now, "the EK certificate")

    chain = [cert]
    current = cert
    anchor_spkis = {_spki(a.public_key()) for a in anchors}
    for _ in range(MAX_CHAIN):
        issuer = _issuer_of(current, pool)
        if issuer is None:
            raise EkCertificateError(f"no trusted issuer found for '{current.issuer.rfc4514_string() or '(empty)'}'")
        _check_validity(issuer, now, f"issuer '{issuer.subject.rfc4514_string()}'")
        _check_revocation(current, issuer, revocation_lists)
        try:
            if not issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise EkCertificateError(f"issuer '{issuer.subject.rfc4514_string()}' is not a CA")
        except x509.ExtensionNotFound:
            pass  # an old (v1) root carries no extensions
        chain.append(issuer)
        if _spki(issuer.public_key()) in anchor_spkis:
            return {"tpm": fields, "chain": [c.subject.rfc4514_string() for c in chain[1:]],
                    "serial": f"{cert.serial_number:x}", "not_after": cert.not_valid_after_utc.isoformat()}
        current = issuer
    raise EkCertificateError("the issuer chain is too long")
