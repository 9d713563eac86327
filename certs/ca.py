"""The management plane's certificate authority (like vSphere's VMCA).

Kept under ``<home>/ca``: the issuing certificate and its chain (PEM, public),
the private key sealed by a ``CaKeyStore`` (never in clear on disk; vmcrypt's
seals it in a container under a key of the default key provider), a log of
issued certificates (serials are unique), and revocations from which a CRL is
built. A root (ECC P-384) is created on first use; a third-party CA can replace it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from certs.ek import TpmIdentity, build_ek_certificate
from durable.atomic import write_atomic

CA_DIR = "ca"
KEY_FILE = "ca-key-{}.vmc"  # named by the key's SPKI hash: the chain file picks the key
PENDING_KEY_FILE = "pending-key.vmc"  # the key of a CSR, waiting for its signed certificate
CHAIN_FILE = "chain.pem"  # issuing certificate first, then up to the root
ISSUED_FILE = "issued.json"
ROOT_VALIDITY = datetime.timedelta(days=365 * 10)


class CaError(Exception):
    """The CA cannot do what was asked; ``reason`` says why in plain words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CaKeyStore(Protocol):
    """Keeps the CA's private keys (PKCS#8 DER) sealed in files of the CA's directory, never in clear."""

    def seal(self, path: Path, secret: bytes) -> None:
        """Write ``secret`` sealed to ``path``, atomically, readable by the owner only."""

    def unseal(self, path: Path) -> bytes:
        """The secret sealed in ``path``."""


@dataclass(frozen=True)
class IssuedCertificate:
    """One entry of the issued log: what was certified (kind, subject), until when, whether revoked."""

    serial: int
    kind: str
    subject: str
    not_after: str
    revoked: str | None = None
    vm_path: str | None = None  # the .vmx of the VM whose vTPM holds it, for reissuing them all


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _hash_for(key: Any) -> hashes.HashAlgorithm:
    return hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) else hashes.SHA256()


class CertificateAuthority:
    """The CA of one management home: issues EK certificates, revokes them, publishes the CRL (see the module)."""

    def __init__(self, home: str | os.PathLike[str], key_store: CaKeyStore) -> None:
        self.directory = Path(home) / CA_DIR
        self.key_store = key_store

    # ------------------------------------------------------------------ storage

    @property
    def chain_path(self) -> Path:
        """The public chain file (PEM, issuing certificate first); its presence means the CA exists."""
        return self.directory / CHAIN_FILE

    @staticmethod
    def _key_file(public_key: Any) -> str:
        return KEY_FILE.format(hashlib.sha256(_spki(public_key)).hexdigest()[:16])

    @property
    def key_path(self) -> Path:
        """The encrypted private key of the current issuing certificate."""
        return self.directory / self._key_file(self.certificate.public_key())

    def exists(self) -> bool:
        """A CA was created or imported here (nothing is created by asking)."""
        return self.chain_path.exists()

    def ensure(self) -> None:
        """Create the root CA on first use."""
        if not self.exists():
            self.create_root()

    def chain(self) -> list[x509.Certificate]:
        """The issuing certificate, then each issuer up to the root; the root is created on first use."""
        self.ensure()
        return x509.load_pem_x509_certificates(self.chain_path.read_bytes())

    @property
    def certificate(self) -> x509.Certificate:
        """The issuing certificate: the one that signs EK certificates and the CRL."""
        return self.chain()[0]

    def root(self) -> x509.Certificate:
        """The last certificate of the chain: what verifiers of this home's EK certificates trust."""
        return self.chain()[-1]

    def _seal_key(self, key: Any, path: Path) -> None:
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self.key_store.seal(path, der)

    def _unseal_key(self, path: Path) -> Any:
        return serialization.load_der_private_key(self.key_store.unseal(path), password=None)

    def _private_key(self) -> Any:
        self.ensure()
        path = self.key_path
        if not path.exists():
            raise CaError(f"the private key of the issuing CA is missing ({path.name})")
        return self._unseal_key(path)

    def _install(self, chain: list[x509.Certificate], key: Any) -> None:
        """Key first, then the chain (one atomic rename switches CAs), then old keys go.

        A crash at any point leaves the old CA or the new one usable, never a chain
        without its key.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._seal_key(key, self.directory / self._key_file(key.public_key()))
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        write_atomic(self.chain_path, pem, mode=0o644)
        current = self._key_file(key.public_key())
        for stale in self.directory.glob(KEY_FILE.format("*")):
            if stale.name != current:
                stale.unlink()

    # ------------------------------------------------------------------ creation and replacement

    def create_root(self, common_name: str = "vmcrypt VMCA") -> x509.Certificate:
        """Make a new self-signed ECC P-384 root (10 years) the issuing CA, replacing the current one and
        its key; the key is sealed by the key store before the chain switches to it."""
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmcrypt")])
        now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )
        self._install([cert], key)
        return cert

    def import_ca(self, chain: list[x509.Certificate], key: Any) -> None:
        """Replace the issuing CA: ``chain`` starts with the certificate of ``key``."""
        if not chain:
            raise CaError("no certificate given")
        if _spki(key.public_key()) != _spki(chain[0].public_key()):
            raise CaError("the private key does not belong to the first certificate")
        try:
            if not chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise CaError("the certificate is not a CA certificate")
        except x509.ExtensionNotFound:
            raise CaError("the certificate has no basicConstraints: not a CA certificate") from None
        for child, parent in zip(chain, chain[1:]):
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise CaError(f"'{child.subject.rfc4514_string()}' is not signed by the next certificate in the chain "
                              f"('{parent.subject.rfc4514_string()}'): give the chain issuing certificate first") from None
        self._install(chain, key)

    def import_files(self, certificate: bytes, key: bytes | None, password: bytes | None) -> None:
        """PEM chain + PEM key, or a PKCS#12 bundle (``key`` None)."""
        try:
            if key is None:
                private, cert, extra = pkcs12.load_key_and_certificates(certificate, password)
                if private is None or cert is None:
                    raise CaError("the PKCS#12 file holds no key and certificate")
                self.import_ca([cert, *extra], private)
            else:
                self.import_ca(x509.load_pem_x509_certificates(certificate),
                               serialization.load_pem_private_key(key, password))
        except (ValueError, TypeError) as exc:
            raise CaError(f"cannot read the CA files: {exc}") from None

    def create_csr(self, common_name: str) -> bytes:
        """A CSR for a subordinate CA; the new key waits (encrypted) for the signed certificate."""
        key = ec.generate_private_key(ec.SECP384R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA384())
        )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._seal_key(key, self.directory / PENDING_KEY_FILE)
        return csr.public_bytes(serialization.Encoding.PEM)

    def import_signed(self, chain_pem: bytes) -> None:
        """Finish a CSR: the signed certificate (and its chain) for the pending key."""
        pending = self.directory / PENDING_KEY_FILE
        if not pending.exists():
            raise CaError("no certificate request is pending (create one with 'ca csr')")
        key = self._unseal_key(pending)
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise CaError(f"cannot read the signed chain: {exc}") from None
        if chain and _spki(chain[0].public_key()) != _spki(key.public_key()):
            raise CaError("the signed certificate is not for the key of the pending CSR")
        self.import_ca(chain, key)
        pending.unlink()

    # ------------------------------------------------------------------ issuing

    def _issued(self) -> list[IssuedCertificate]:
        path = self.directory / ISSUED_FILE
        if not path.exists():
            return []
        return [IssuedCertificate(**entry) for entry in json.loads(path.read_text())]

    def _save_issued(self, entries: list[IssuedCertificate]) -> None:
        body = [entry.__dict__ for entry in entries]
        write_atomic(self.directory / ISSUED_FILE, json.dumps(body, indent=1).encode(), mode=0o600)

    def _new_serial(self, taken: set[int]) -> int:
        while True:
            serial = secrets.randbits(63) | 1 << 62  # positive, 63 bits, never reused
            if serial not in taken:
                return serial

    def issue_ek(self, ek_public: Any, identity: TpmIdentity, subject: str, vm_path: str | None = None) -> x509.Certificate:
        """An EK certificate for ``ek_public``, logged under ``subject`` (e.g. the VM's name)."""
        issued = self._issued()
        serial = self._new_serial({entry.serial for entry in issued})
        cert = build_ek_certificate(ek_public, identity, self.certificate, self._private_key(), serial)
        issued.append(IssuedCertificate(serial, "ek", subject, cert.not_valid_after_utc.isoformat(), vm_path=vm_path))
        self._save_issued(issued)
        return cert

    def revoke(self, serial: int) -> None:
        """Mark the certificate with ``serial`` revoked (the next CRL lists it); revoking twice changes
        nothing. CaError if this CA never issued that serial."""
        issued = self._issued()
        for index, entry in enumerate(issued):
            if entry.serial == serial:
                if entry.revoked:
                    return
                issued[index] = dataclasses.replace(entry, revoked=datetime.datetime.now(datetime.timezone.utc).isoformat())
                self._save_issued(issued)
                return
        raise CaError(f"no certificate with serial {serial:x} was issued by this CA")

    def supersede(self, cert: x509.Certificate) -> bool:
        """Revoke a certificate being replaced, if this CA issued it; True when it did."""
        if cert.issuer != self.certificate.subject:
            return False
        if not any(entry.serial == cert.serial_number for entry in self._issued()):
            return False
        self.revoke(cert.serial_number)
        return True

    def certified_vms(self) -> list[str]:
        """The .vmx paths of every VM this management home gave an EK certificate, oldest first."""
        seen: dict[str, None] = {}
        for entry in self._issued():
            if entry.vm_path:
                seen.setdefault(entry.vm_path)
        return list(seen)

    def relocate_vm(self, old_vmx: str, new_vmx: str) -> None:
        """A VM moved (cold migration): its certificates now belong to the new path."""
        issued = self._issued()
        if any(entry.vm_path == old_vmx for entry in issued):
            self._save_issued([dataclasses.replace(e, vm_path=new_vmx) if e.vm_path == old_vmx else e for e in issued])

    def revoked_serials(self) -> set[int]:
        """The serials of every revoked certificate this CA issued."""
        return {entry.serial for entry in self._issued() if entry.revoked}

    def crl(self) -> x509.CertificateRevocationList:
        """A CRL of every revocation, signed by the issuing key, valid for 7 days; CaError if the issuing key
        is missing (the key store's errors if it cannot be unsealed)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.certificate.subject)
                   .last_update(now).next_update(now + datetime.timedelta(days=7)))
        for entry in self._issued():
            if entry.revoked:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(entry.serial)
                    .revocation_date(datetime.datetime.fromisoformat(entry.revoked)).build())
        key = self._private_key()
        return builder.sign(key, _hash_for(key))

    def describe(self) -> dict[str, Any]:
        """The CA for display (subject, issuer, key, chain, fingerprint, counts): public facts only."""
        chain = self.chain()
        cert = chain[0]
        return {
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "not_after": cert.not_valid_after_utc.isoformat(),
            "key": "ECC " + cert.public_key().curve.name if isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
            else f"RSA {cert.public_key().key_size}" if isinstance(cert.public_key(), rsa.RSAPublicKey) else "other",
            "chain": [c.subject.rfc4514_string() for c in chain],
            "sha256_fingerprint": cert.fingerprint(hashes.SHA256()).hex(),
            "issued": len(self._issued()),
            "revoked": sum(1 for e in self._issued() if e.revoked),
        }
