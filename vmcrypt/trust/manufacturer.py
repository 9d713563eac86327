"""The TPM manufacturer's CA: it certifies the EKs of hosts' hardware TPMs.

Distinct from the management plane's VMCA-like CA (``certs.ca`` under the management
home), which certifies the EKs of VMs' vTPMs: a Trust Authority trusts hardware TPM
vendors, never the workload cluster's own CA. The same CA code runs both; here its
directory is the manufacturer's own (by convention ``<management home>/tpm-manufacturer``
in tests and the demo, standing in for a vendor's factory), with its private key in a
0600 file (a vendor keeps it in an HSM; nothing of the management plane can read it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs.ca import CertificateAuthority
from certs.ek import TpmIdentity
from durable.atomic import write_atomic

MANUFACTURER_DIR = "tpm-manufacturer"
# TPM_PT_MANUFACTURER "HWTP": a hardware-like TPM vendor, not the vTPM's "VMCR".
HOST_TPM_IDENTITY = TpmIdentity(int.from_bytes(b"HWTP", "big"), "esx-host-tpm", 0x00020000, "2.0", 0, 164)


class _FileKeyStore:
    """The manufacturer's key, PKCS#8 DER in a 0600 file of its own directory."""

    def seal(self, path: Path, secret: bytes) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, secret, mode=0o600)

    def unseal(self, path: Path) -> bytes:
        return path.read_bytes()


class ManufacturerCA:
    """A TPM vendor's EK CA (ECC P-384 root), created on first use in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], name: str = "HWTP TPM Manufacturer EK Root CA") -> None:
        self.directory = Path(directory)
        self.name = name
        self._ca = CertificateAuthority(self.directory, _FileKeyStore())

    def ensure(self) -> "ManufacturerCA":
        """Create the root key and certificate in ``directory`` (0700, key 0600) unless they exist; itself."""
        if not self._ca.exists():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._ca.create_root(self.name)
        return self

    @property
    def certificate(self) -> x509.Certificate:
        """The root certificate a Trust Authority imports as a trusted manufacturer CA."""
        self.ensure()
        return self._ca.root()

    def certificate_pem(self) -> bytes:
        """The root certificate in PEM, as a TrustedAdmin imports it."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_ek(self, ek_public: Any, subject: str) -> x509.Certificate:
        """An EK certificate (TCG EK profile) for ``ek_public``, logged under ``subject`` (the host)."""
        self.ensure()
        return self._ca.issue_ek(ek_public, HOST_TPM_IDENTITY, subject)
