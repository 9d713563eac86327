"""Real `pykmip-server` processes on loopback with mutual TLS, for tests and benchmarks.

Makes a throw-away CA, a server certificate (EKU serverAuth, SAN 127.0.0.1 and
localhost) and a client certificate (EKU clientAuth), writes one config per
server (own database and policy directory) and runs each server in its own
process group, because a PyKMIP server is several processes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmcrypt.providers.kmip import parse_server, require_pykmip, split_key_id

SERVER_BINARY = Path(sys.executable).with_name("pykmip-server")
CLIENT_CN = "vmcrypt-test-client"


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files a server and a client need."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
                 *, ca: bool = False, eku: x509.ObjectIdentifier | None = None,
                 san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, ca_name: str = "vmcrypt test KMIP CA") -> Pki:
    """A CA plus server and client certificates, written as PEM files into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_cert = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server_cert = _certificate("127.0.0.1", server_key, ca_name, ca_key, eku=ExtendedKeyUsageOID.SERVER_AUTH, san=san)
    client_cert = _certificate(CLIENT_CN, client_key, ca_name, ca_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
              directory / "client.pem", directory / "client.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.server_key, server_key)
    _write_key(pki.client_key, client_key)
    return pki


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class KmipServer:
    """One running pykmip-server; ``address`` is what a provider's server list holds."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        """Its log and its stderr, for error messages."""
        parts = []
        for path in (self.log, self.log.with_name("stderr.txt")):
            try:
                parts.append(f"{path}:\n{path.read_text(errors='replace')}")
            except OSError:
                parts.append(f"{path}: (none)")
        return "\n".join(parts)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crashed server."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGINT the group (about a second), SIGKILL if it lingers."""
        if not self.running():
            self._signal_group(signal.SIGKILL)
            return
        self._signal_group(signal.SIGINT)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


def _write_config(directory: Path, pki: Pki, port: int) -> Path:
    (directory / "policies").mkdir(parents=True, exist_ok=True)
    config = directory / "server.conf"
    config.write_text(
        "[server]\n"
        "hostname=127.0.0.1\n"
        f"port={port}\n"
        f"certificate_path={pki.server_cert}\n"
        f"key_path={pki.server_key}\n"
        f"ca_path={pki.ca}\n"
        "auth_suite=TLS1.2\n"
        f"policy_path={directory / 'policies'}\n"
        "enable_tls_client_auth=True\n"
        "logging_level=INFO\n"
        f"database_path={directory / 'pykmip.db'}\n"
    )
    return config


def _wait_ready(server: KmipServer, deadline: float) -> None:
    """Poll until the server accepts a connection; RuntimeError with its logs if it exits or the deadline passes."""
    while server.running():
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.2):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            server.stop()
            raise RuntimeError(f"pykmip-server did not listen on {server.port} in time; {server.log_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"pykmip-server exited with status {server.process.returncode} before it listened; "
                       f"{server.log_text()}")


def start_server(directory: Path, pki: Pki, timeout: float = 20.0) -> KmipServer:
    """Start a server in ``directory`` (created) on a free port and wait until it accepts."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = _write_config(directory, pki, port)
    log = directory / "server.log"
    with open(directory / "stderr.txt", "wb") as stderr:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [str(SERVER_BINARY), "-f", str(config), "-l", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True, cwd=directory,
        )
    server = KmipServer(process, port, log)
    _wait_ready(server, time.monotonic() + timeout)
    return server


def register_copy(pki: Pki, server: KmipServer, key_id: str, material: bytes) -> None:
    """Put the same KEK under the same name on another server: PyKMIP servers do not replicate."""
    require_pykmip()
    from kmip import enums
    from kmip.pie.client import ProxyKmipClient
    from kmip.pie.objects import SymmetricKey

    host, port = parse_server(server.address)
    key = SymmetricKey(enums.CryptographicAlgorithm.AES, 256, material,
                       [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT],
                       name=split_key_id(key_id)[0])
    with ProxyKmipClient(hostname=host, port=port, cert=str(pki.client_cert), key=str(pki.client_key),
                         ca=str(pki.ca)) as client:
        client.activate(client.register(key))
