"""From the Trust Authority's configuration (files a TrustedAdmin changed) to the verifier's policy.

The configuration keeps what the administrators imported, as they imported it: manufacturer CA
certificates (PEM), explicitly trusted EK certificates (DER) and image manifests (JSON). This
module builds the verifier's ``TrustPolicy`` from them, and reads a manifest's version.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from vmcrypt.trust.images import ImageManifest


def image_version(manifest_json: str) -> str:
    """The version a manifest describes; ``ImageError`` when it is malformed or a VIB signature is bad."""
    return ImageManifest.from_json(manifest_json).version


def build_policy(manufacturer_cas: list[bytes], trusted_eks: list[bytes], images: list[str]) -> Any:
    """The verifier's policy: manufacturer CAs (PEM), trusted EK certificates (DER), manifests (JSON)."""
    from vmcrypt.trust.policy import TrustPolicy
    policy = TrustPolicy()
    for pem in manufacturer_cas:
        policy = policy.with_manufacturer_ca(x509.load_pem_x509_certificate(pem))
    for der in trusted_eks:
        policy = policy.with_trusted_ek(x509.load_der_x509_certificate(der))
    for text in images:
        policy = policy.with_image(ImageManifest.from_json(text))
    return policy


def make_verifier(policy: Any) -> Any:
    """A ``Verifier`` judging reports by ``policy``; the attestation service makes one per configuration version."""
    from vmcrypt.trust.verifier import Verifier
    return Verifier(policy)
