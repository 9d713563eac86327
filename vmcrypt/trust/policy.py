"""What a Trust Authority trusts: TPM manufacturers, individual EKs, image versions, which PCRs.

``TrustPolicy`` is immutable; TrustedAdmins change it by making a new one (``with_image``,
``with_manufacturer_ca``, ...) and handing it to the verifier, which drops its caches then.
Its JSON form is what the attestation service stores and what the setup CLI imports.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vmcrypt.errors import VmcryptError
from vmcrypt.trust.images import ComponentKind, ImageError, ImageManifest
from vtpm.constants import ALG
from vtpm.ima import reference_templates

DEFAULT_PCRS = tuple(range(11))  # firmware, Secure Boot, boot loader (0-7), static OS (8-9), IMA (10)
DEFAULT_BANKS = (ALG.SHA256,)
BANKS_BY_NAME = {"sha1": ALG.SHA1, "sha256": ALG.SHA256, "sha384": ALG.SHA384, "sha512": ALG.SHA512}
NAMES_BY_BANK = {alg: name for name, alg in BANKS_BY_NAME.items()}


class PolicyError(VmcryptError):
    """A trust policy that is malformed or would trust nothing sensible."""


def ek_fingerprint(public_key: Any) -> str:
    """SHA-256 of the EK's SubjectPublicKeyInfo, hex: how the trusted-EK list names an EK."""
    return hashlib.sha256(public_key.public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@dataclass(frozen=True)
class ImageIndex:
    """One trusted manifest as the verifier looks things up: digests by component kind and name."""

    manifest: ImageManifest
    by_kind: Mapping[ComponentKind, Mapping[str, bytes]]
    # reference values of the runtime files: ima-ng template data -> its SHA-256 (what PCR 10 gets)
    ima_reference: Mapping[bytes, bytes]
    # every (kind, name, SHA-256) of by_kind: a boot that measured exactly these matches every component
    components: frozenset[tuple[ComponentKind, str, bytes]] = frozenset()

    @classmethod
    def of(cls, manifest: ImageManifest) -> "ImageIndex":
        """Index ``manifest``: its digests by kind and name, and the ima-ng reference of each runtime file."""
        table: dict[ComponentKind, dict[str, bytes]] = {kind: {} for kind in ComponentKind}
        for component in manifest.components:
            table[component.kind][component.name] = component.sha256
        components = frozenset((kind, name, digest) for kind, names in table.items() for name, digest in names.items())
        return cls(manifest, table, reference_templates(manifest.runtime_files, ALG.SHA256), components)


@dataclass(frozen=True)
class TrustPolicy:
    """What one Trust Authority accepts: whose EKs (manufacturer CAs or single EKs), which image versions,
    which PCRs in which banks a quote must cover, and whether Secure Boot must be on.

    Immutable; each change returns a new policy. PolicyError when the banks lack sha256 or name one other
    than sha1/256/384/512, a PCR is above 23, or an image is filed under another version than its own."""

    manufacturer_cas: tuple[bytes, ...] = ()  # DER certificates of trusted TPM manufacturer CAs
    trusted_eks: frozenset[str] = frozenset()  # ek_fingerprint of EKs trusted without a certificate chain
    images: Mapping[str, ImageManifest] = field(default_factory=dict)  # version -> trusted manifest
    pcrs: tuple[int, ...] = DEFAULT_PCRS  # the quote must cover these ...
    banks: tuple[int, ...] = DEFAULT_BANKS  # ... in these banks
    require_secure_boot: bool = True

    def __post_init__(self) -> None:
        if ALG.SHA256 not in self.banks:
            raise PolicyError("the policy's banks must include sha256 (image digests are SHA-256)")
        if not set(self.banks) <= set(NAMES_BY_BANK) or not set(self.pcrs) <= set(range(24)):
            raise PolicyError("unknown bank or PCR index in the policy")
        for version, manifest in self.images.items():
            if manifest.version != version:
                raise PolicyError(f"image filed under {version} is version {manifest.version}")

    # ------------------------------------------------------------------ lookups (computed once per policy)

    @functools.cached_property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        """The manufacturer CA certificates, parsed once: the roots an EK certificate chain must end in."""
        return tuple(x509.load_der_x509_certificate(der) for der in self.manufacturer_cas)

    @functools.cached_property
    def index(self) -> Mapping[str, ImageIndex]:
        """Each trusted version's ``ImageIndex``, built once per policy."""
        return {version: ImageIndex.of(manifest) for version, manifest in self.images.items()}

    # ------------------------------------------------------------------ changes (a new policy each)

    def with_manufacturer_ca(self, certificate: x509.Certificate | bytes) -> "TrustPolicy":
        """This policy also trusting EKs certified under ``certificate`` (a certificate or its DER); the same
        policy if it is there already. PolicyError when it is not a CA certificate (no basicConstraints cA)."""
        der = certificate if isinstance(certificate, bytes) else certificate.public_bytes(serialization.Encoding.DER)
        try:
            cert = x509.load_der_x509_certificate(der)
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise PolicyError(f"not a CA certificate ({exc})") from None
        if not constraints.ca:
            raise PolicyError("not a CA certificate (basicConstraints cA is false)")
        if der in self.manufacturer_cas:
            return self
        return dataclasses.replace(self, manufacturer_cas=self.manufacturer_cas + (der,))

    def with_trusted_ek(self, ek: x509.Certificate | Any) -> "TrustPolicy":
        """This policy also trusting one EK by its public key (given as the key or a certificate holding it),
        for a TPM whose EK has no certificate under a trusted manufacturer CA."""
        key = ek.public_key() if isinstance(ek, x509.Certificate) else ek
        return dataclasses.replace(self, trusted_eks=self.trusted_eks | {ek_fingerprint(key)})

    def with_image(self, manifest: ImageManifest) -> "TrustPolicy":
        """This policy also trusting ``manifest``'s version (replacing a manifest of the same version).
        PolicyError when a VIB of it is unsigned or its vendor signature does not verify."""
        try:
            manifest.check()
        except ImageError as exc:
            raise PolicyError(str(exc)) from None
        return dataclasses.replace(self, images={**self.images, manifest.version: manifest})

    def without_image(self, version: str) -> "TrustPolicy":
        """This policy no longer trusting ``version``; PolicyError when it is not trusted now."""
        if version not in self.images:
            raise PolicyError(f"version {version} is not trusted")
        return dataclasses.replace(self, images={v: m for v, m in self.images.items() if v != version})

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> str:
        """The policy as JSON (CAs in PEM, banks by name, images as their manifests) for ``from_json``."""
        return json.dumps({
            "manufacturer_cas": [x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
                                 for der in self.manufacturer_cas],
            "trusted_eks": sorted(self.trusted_eks),
            "images": [json.loads(m.to_json()) for _, m in sorted(self.images.items())],
            "pcrs": list(self.pcrs), "banks": [NAMES_BY_BANK[b] for b in self.banks],
            "require_secure_boot": self.require_secure_boot})

    @classmethod
    def from_json(cls, text: str | bytes) -> "TrustPolicy":
        """Read a policy written by ``to_json``. PolicyError, naming the problem, when the text is not JSON, a
        key is missing or extra, a CA is not a CA certificate, an EK fingerprint is not lowercase hex SHA-256,
        a bank or PCR is unknown, or an image manifest is malformed or badly signed."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise PolicyError("trust policy: not JSON") from None
        keys = {"manufacturer_cas", "trusted_eks", "images", "pcrs", "banks", "require_secure_boot"}
        if not isinstance(data, dict) or set(data) != keys:
            raise PolicyError(f"trust policy: expected exactly {', '.join(sorted(keys))}")
        try:
            cas = tuple(x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
                        for pem in data["manufacturer_cas"])
            eks = frozenset(_fingerprint(value) for value in data["trusted_eks"])
            images = {}
            for entry in data["images"]:
                manifest = ImageManifest.from_json(json.dumps(entry))
                images[manifest.version] = manifest
            pcrs = tuple(int(p) for p in data["pcrs"])
            banks = tuple(BANKS_BY_NAME[name] for name in data["banks"])
            secure_boot = data["require_secure_boot"]
            if not isinstance(secure_boot, bool):
                raise ValueError("require_secure_boot must be true or false")
        except ImageError as exc:
            raise PolicyError(f"trust policy: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise PolicyError(f"trust policy: {exc}") from None
        policy = cls(cas, eks, images, pcrs, banks, secure_boot)
        for der in cas:
            policy.with_manufacturer_ca(der)  # each one a CA certificate
        return policy


def _fingerprint(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("a trusted EK is the lowercase hex SHA-256 of its SubjectPublicKeyInfo")
    return value
