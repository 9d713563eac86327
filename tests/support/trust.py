"""Hosts for Trust Authority tests: booted trusted or tampered into real engines on disk.

Layout as the management plane keeps it: ``<home>/hosts/<name>/`` per host and the TPM
manufacturer's CA in ``<home>/tpm-manufacturer``. Images come from one vendor key per test
process (``images.default_vendor``).
"""

from __future__ import annotations

from pathlib import Path

from vmcrypt.trust.collect import HostEvidence
from vmcrypt.trust.evidence import AttestationReport, Verdict
from vmcrypt.trust.host_boot import BootedHost, boot_host
from vmcrypt.trust.images import BootImage, Tamper, make_image
from vmcrypt.trust.manufacturer import MANUFACTURER_DIR, ManufacturerCA
from vmcrypt.trust.policy import TrustPolicy
from vmcrypt.trust.verifier import Verifier

TRUSTED_VERSION = "8.0.2"
_IMAGES: dict[str, BootImage] = {}


def image(version: str = TRUSTED_VERSION) -> BootImage:
    """The (cached) image of ``version``: making one signs 15 VIBs."""
    if version not in _IMAGES:
        _IMAGES[version] = make_image(version)
    return _IMAGES[version]


def manufacturer(home: Path) -> ManufacturerCA:
    return ManufacturerCA(Path(home) / MANUFACTURER_DIR)


def boot_trusted_host(home: Path, name: str = "esx-01", version: str = TRUSTED_VERSION) -> BootedHost:
    return boot_host(Path(home) / "hosts" / name, image(version))


def boot_tampered_host(home: Path, tamper: Tamper | str, name: str = "esx-bad",
                       version: str = TRUSTED_VERSION) -> BootedHost:
    """A host booted with one tamper: modified-vib, unsigned-vib, secure-boot-off, old-version,
    foreign-db-key."""
    return boot_host(Path(home) / "hosts" / name, image(version), tamper=tamper)


def trusted_policy(home: Path, versions: tuple[str, ...] = (TRUSTED_VERSION,)) -> TrustPolicy:
    """Trust the home's TPM manufacturer and the images of ``versions``."""
    policy = TrustPolicy().with_manufacturer_ca(manufacturer(home).certificate)
    for version in versions:
        policy = policy.with_image(image(version).manifest)
    return policy


def attest(verifier: Verifier, host: BootedHost, *, version: str | None = None,
           evidence: HostEvidence | None = None) -> tuple[AttestationReport, Verdict]:
    """One full round: identity, challenge, answer, verify."""
    evidence = evidence or HostEvidence(host)
    ek, ak = evidence.identity()
    report = evidence.answer(verifier.challenge(ek, ak), host=host.name, version=version or host.version)
    return report, verifier.verify(report)
