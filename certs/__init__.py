"""Certificates: the management CA, the TCG EK certificate profile and EK certificate validation."""

from certs.validate import EkCertificateError, validate_ek_certificate

__all__ = ["EkCertificateError", "validate_ek_certificate"]
