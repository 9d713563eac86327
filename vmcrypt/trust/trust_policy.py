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
    from vmcrypt.trust.policy import TrustPolicy
    return TrustPolicy(manufacturer_cas=tuple(x509.load_pem_x509_certificate(pem) for pem in manufacturer_cas),
                       trusted_eks=tuple(trusted_eks),
                       images={m.version: m for m in (ImageManifest.from_json(text) for text in images)})


def make_verifier(policy: Any) -> Any:
    from vmcrypt.trust.verifier import Verifier
    return Verifier(policy)
