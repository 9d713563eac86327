"""`vmcrypt server`: the management service (a vpxd-like daemon) over HTTPS on loopback and a Unix socket.

The service owns the management home: it runs as the service user (root), its
umask is 077, and at start it makes every directory of the home 0700 and every
file 0600, with three exceptions that let unprivileged local users reach it and
nothing else: the home itself and its ``run/`` directory are 0711 (traverse, no
listing), the socket ``run/vmcrypt.sock`` is 0666, and ``service-ca.pem`` (the
service CA's certificate, which clients verify the HTTPS server with) is 0644.
Each datastore's directory is made 0700 too.

HTTPS: at first start a service CA (ECC P-256) is made under ``HOME/service/``;
at every start a server certificate for the listening address is issued from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import socket
import stat
from pathlib import Path

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from durable.atomic import write_atomic
from vmcrypt.inventory import Inventory, InventoryError
from vmcrypt.inventory_db import dispose_all
from vmcrypt.service_app import build_app
from vmcrypt.tls_names import server_alt_names

SOCKET_NAME = "vmcrypt.sock"
SERVICE_CA_FILE = "service-ca.pem"
SERVICE_DIR = "service"
READY_LINE = "vmcrypt server: serving"


def default_socket(home: Path) -> Path:
    """``HOME/run/vmcrypt.sock``: where the service listens and where clients look by default."""
    return home / "run" / SOCKET_NAME


def service_ca_path(home: Path) -> Path:
    """``HOME/service-ca.pem``: the service CA's certificate, with which clients verify the HTTPS server."""
    return home / SERVICE_CA_FILE


# ----------------------------------------------------------------------------- the home's modes


def secure_home(home: Path, datastores: list[str]) -> None:
    """Directories 0700 and files 0600, but for what local users must reach (see the module's docstring)."""
    public = {home: 0o711, home / "run": 0o711, service_ca_path(home): 0o644}
    (home / "run").mkdir(mode=0o711, exist_ok=True)
    for directory, subdirectories, files in os.walk(home):
        for name in subdirectories + files:
            path = Path(directory) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
                continue
            os.chmod(path, public.get(path, 0o700 if stat.S_ISDIR(mode) else 0o600))
    for path, mode in public.items():
        if path.exists():
            os.chmod(path, mode)
    for root in datastores:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(root, 0o700)


# ----------------------------------------------------------------------------- TLS


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), mode=0o600)


def _service_ca(home: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    directory = home / SERVICE_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("vmcrypt management service CA"))
            .issuer_name(_name("vmcrypt management service CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o600)
    return cert, key


def issue_server_certificate(home: Path, host: str) -> tuple[Path, Path]:
    """A server certificate for ``host`` (and localhost, 127.0.0.1) from the service CA; (cert, key) paths.
    The CA's certificate is exported to ``HOME/service-ca.pem`` (0644) for clients."""
    ca_cert, ca_key = _service_ca(home)
    key = ec.generate_private_key(ec.SECP256R1())
    names = server_alt_names(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory = home / SERVICE_DIR
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    _write_key(key_path, key)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o600)
    write_atomic(service_ca_path(home), ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


# ----------------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve`` (two servers share one process)."""

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201
        yield


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, not {listen!r}")
    return host.strip("[]"), int(port)


def _unix_socket(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()  # a stale socket of an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)
    sock.listen(128)
    return sock


def _tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


async def _serve_all(servers: list[tuple[_Server, socket.socket]], ready: str) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server, _ in servers:
            server.should_exit = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    while not all(server.started for server, _ in servers):
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.01)
    else:
        print(ready, flush=True)
    await asyncio.gather(*tasks)


def serve(home: Path, listen: str | None, socket_path: Path | None) -> int:
    """Serve ``home`` until SIGTERM/SIGINT: HTTPS on ``listen`` (HOST:PORT; port 0 picks one) if given,
    and always the Unix socket (``socket_path``, by default ``HOME/run/vmcrypt.sock``)."""
    os.umask(0o077)
    home.mkdir(mode=0o711, parents=True, exist_ok=True)
    datastores: list[str] = []
    with contextlib.suppress(InventoryError):  # without an inventory every request says to create one
        with Inventory(home, create=False) as inventory:
            datastores = [root for _, root in inventory.datastores()]
    secure_home(home, datastores)
    app = build_app(home)
    config = dict(app=app, lifespan="off", log_level="warning", access_log=False)
    unix_path = socket_path or default_socket(home)
    servers = [(_Server(uvicorn.Config(**config)), _unix_socket(unix_path))]
    where = [f"unix:{unix_path}"]
    if listen:
        host, port = _parse_listen(listen)
        cert, key = issue_server_certificate(home, host)
        tcp = _tcp_socket(host, port)
        tls = uvicorn.Config(**config, ssl_certfile=str(cert), ssl_keyfile=str(key))
        servers.append((_Server(tls), tcp))
        where.append(f"https://{host}:{tcp.getsockname()[1]} (CA: {service_ca_path(home)})")
    try:
        asyncio.run(_serve_all(servers, f"{READY_LINE} on {' and '.join(where)}"))
    finally:
        app.state.worker.close()
        dispose_all()  # PostgreSQL: the pool's connections end with the service
        for _, sock in servers:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            unix_path.unlink()
    return 0
