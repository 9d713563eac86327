"""The Trust Authority's TLS certificate authority: server certificates for its services, client
certificates for the hosts and the management plane it trusts (mutual TLS on both services).

Client certificates name their holder in the common name: ``host:NAME`` for a host agent,
``management:CLUSTER`` for a workload cluster's management plane. The services read that name
from the verified peer certificate; nothing the client sends in a request can change it.
Private keys are written 0600 and never leave the side that made them: clients send a CSR.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from durable.atomic import write_atomic
from vmcrypt.errors import VmcryptError
from vmcrypt.tls_names import server_alt_names

HOST_PREFIX = "host:"
MANAGEMENT_PREFIX = "management:"
CLIENT_DAYS = 365


class PkiError(VmcryptError):
    """A certificate or CSR that the Trust Authority refuses."""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (callers write it 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The ECC private key in a PEM file; PkiError when the file holds another kind of key."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an ECC private key")
    return key


def new_client_key(directory: Path, common_name: str) -> bytes:
    """A new client key written to ``directory/client-key.pem`` (0600); returns a CSR (PEM) for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(directory / "client-key.pem", key_pem(key), mode=0o600)
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def common_name(cert: x509.Certificate) -> str:
    """The subject's common name ('' when there is none): how the trust services name their clients."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


@dataclass
class TlsCa:
    """A P-256 CA in ``directory`` (ca.pem, ca-key.pem 0600)."""

    directory: Path

    @property
    def cert_path(self) -> Path:
        """``ca.pem``: the CA's certificate."""
        return self.directory / "ca.pem"

    @property
    def key_path(self) -> Path:
        """``ca-key.pem`` (0600): the CA's private key."""
        return self.directory / "ca-key.pem"

    def exists(self) -> bool:
        """Whether both the certificate and the key are there."""
        return self.cert_path.exists() and self.key_path.exists()

    def create(self, common_name: str) -> x509.Certificate:
        """Make the CA: a self-signed P-256 certificate for ``common_name``, ten years, no intermediate CAs below it;
        PkiError when one exists already."""
        if self.exists():
            raise PkiError(f"a CA already exists in {self.directory}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256()))
        write_atomic(self.key_path, key_pem(key), mode=0o600)
        write_atomic(self.cert_path, cert_pem(cert), mode=0o600)
        return cert

    def certificate(self) -> x509.Certificate:
        """The CA's certificate, read from ``cert_path``."""
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def _issue(self, subject: str, public_key: ec.EllipticCurvePublicKey, eku: x509.ObjectIdentifier,
               san: list[x509.GeneralName] | None = None, days: int = CLIENT_DAYS) -> x509.Certificate:
        ca_cert, ca_key = self.certificate(), load_key(self.key_path)
        now = _now()
        builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(ca_cert.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([eku]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def issue_server(self, directory: Path, host: str) -> tuple[Path, Path]:
        """A server certificate for ``host`` (plus localhost and 127.0.0.1) into ``directory``; (cert, key)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = server_alt_names(host)
        cert = self._issue(host, key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, names)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
        write_atomic(key_path, key_pem(key), mode=0o600)
        write_atomic(cert_path, cert_pem(cert), mode=0o600)
        return cert_path, key_path

    def sign_client(self, csr_pem: bytes, expected_name: str) -> bytes:
        """Sign a client CSR whose common name must be ``expected_name``; the certificate as PEM."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise PkiError(f"the certificate request for {expected_name!r} is not a PEM CSR") from None
        if not csr.is_signature_valid:
            raise PkiError(f"the certificate request for {expected_name!r} has a bad signature")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != expected_name:
            raise PkiError(f"the certificate request names {names[0].value if names else 'nobody'!r}, "
                           f"not {expected_name!r}")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PkiError("client keys must be ECC keys")
        return cert_pem(self._issue(expected_name, public_key, ExtendedKeyUsageOID.CLIENT_AUTH))
